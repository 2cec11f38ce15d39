//! CSI Identity: who we are, what we can do, whether we are ready.

use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::identity_server::Identity;
use tonic::{Request, Response, Status};

use crate::DRIVER_NAME;
use crate::driver::Driver;
use crate::service::Volumes;

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    /// Serves identity for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        IdentityService { driver }
    }
}

/// Who we are: the driver's name and version (node daemons and the cluster
/// controller alike).
pub fn plugin_info() -> csi::GetPluginInfoResponse {
    csi::GetPluginInfoResponse {
        name: DRIVER_NAME.to_string(),
        vendor_version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: Default::default(),
    }
}

/// What the plugin offers: the Controller service with topology and online
/// expansion, and the GroupController service where `group_controller`.
pub fn plugin_capabilities(group_controller: bool) -> Vec<csi::PluginCapability> {
    use csi::plugin_capability::service::Type;
    let cap = |t: Type| csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::Service(
            csi::plugin_capability::Service { r#type: t as i32 },
        )),
    };
    let mut caps = vec![
        cap(Type::ControllerService),
        cap(Type::VolumeAccessibilityConstraints),
    ];
    if group_controller {
        caps.push(cap(Type::GroupControllerService));
    }
    caps.push(csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
            csi::plugin_capability::VolumeExpansion {
                r#type: csi::plugin_capability::volume_expansion::Type::Online as i32,
            },
        )),
    });
    caps
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        crate::grpc::rpc::respond(async { Ok(plugin_info()) }).await
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        crate::grpc::rpc::respond(async {
            Ok(csi::GetPluginCapabilitiesResponse {
                capabilities: plugin_capabilities(true),
            })
        })
        .await
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let volumes = Volumes::new(Arc::clone(&self.driver));
        crate::grpc::rpc::respond(async move {
            // Ready while the pool is mounted, reachable and writable; why not is
            // logged when it changes (and shown by the stowage_pool_usable gauge).
            let problem = volumes.pool_problem().await?;
            Ok(csi::ProbeResponse {
                ready: Some(problem.is_none()),
            })
        })
        .await
    }
}
