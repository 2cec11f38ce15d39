//! The cluster controller's CSI Identity: the driver's name and version, the
//! Controller service with topology and online expansion, and always ready (it
//! holds nothing; a node it cannot reach answers UNAVAILABLE per call).

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::identity_server::Identity;
use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;
use crate::grpc::rpc::respond;

/// The Identity service of a cluster controller.
#[derive(Debug, Clone, Copy)]
pub struct ClusterIdentity;

#[tonic::async_trait]
impl Identity for ClusterIdentity {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        respond(async {
            Ok(csi::GetPluginInfoResponse {
                name: DRIVER_NAME.to_string(),
                vendor_version: env!("CARGO_PKG_VERSION").to_string(),
                manifest: Default::default(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::service::Type;
        let cap = |t: Type| csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::Service(
                csi::plugin_capability::Service { r#type: t as i32 },
            )),
        };
        respond(async {
            Ok(csi::GetPluginCapabilitiesResponse {
                capabilities: vec![
                    cap(Type::ControllerService),
                    cap(Type::VolumeAccessibilityConstraints),
                    csi::PluginCapability {
                        r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                            csi::plugin_capability::VolumeExpansion {
                                r#type: csi::plugin_capability::volume_expansion::Type::Online
                                    as i32,
                            },
                        )),
                    },
                ],
            })
        })
        .await
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        respond(async { Ok(csi::ProbeResponse { ready: Some(true) }) }).await
    }
}
