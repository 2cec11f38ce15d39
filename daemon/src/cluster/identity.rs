//! The cluster controller's CSI Identity: the driver's name and version, the
//! Controller service with topology and online expansion, and always ready (it
//! holds nothing; a node it cannot reach answers UNAVAILABLE per call).

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::identity_server::Identity;
use tonic::{Request, Response, Status};

use crate::grpc::identity::{plugin_capabilities, plugin_info};
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
        respond(async { Ok(plugin_info()) }).await
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // No GroupController: group snapshots are not carried to the nodes.
        respond(async {
            Ok(csi::GetPluginCapabilitiesResponse {
                capabilities: plugin_capabilities(false),
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
