//! CSI Node: stage, publish, their inverses, stats and node info.

use std::path::PathBuf;
use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::node_server::Node;
use tonic::{Request, Response, Status};
use volume_core::manager::node::{PublishOptions, StageOptions};

use volume_core::manager::ephemeral::is_ephemeral;

use crate::driver::Driver;
use crate::grpc::convert::{
    check_capability, condition, is_block, is_reader_only, is_single_writer, mount_flags,
    mount_fs_type,
};
use crate::grpc::rpc::require;
use crate::service::Volumes;

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    driver: Arc<Driver>,
    volumes: Volumes,
}

impl NodeService {
    /// Serves the node side for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        let volumes = Volumes::new(Arc::clone(&driver));
        NodeService { driver, volumes }
    }
}

fn capability(cap: Option<&csi::VolumeCapability>) -> Result<&csi::VolumeCapability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    check_capability(cap).map_err(Status::invalid_argument)?;
    Ok(cap)
}

fn usage(unit: csi::volume_usage::Unit, total: u64, used: u64, available: u64) -> csi::VolumeUsage {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    csi::VolumeUsage {
        available: i(available),
        total: i(total),
        used: i(used),
        unit: unit as i32,
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        let require_publish = self.driver.config.require_controller_publish;
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.staging_target_path, "staging_target_path")?;
            let cap = capability(req.volume_capability.as_ref())?;
            let opts = StageOptions {
                fs_type: mount_fs_type(cap).map(str::to_string),
                mount_flags: mount_flags(cap),
                block: is_block(cap),
                require_attachment: require_publish,
            };
            let staging = PathBuf::from(&req.staging_target_path);
            volumes.stage(&req.volume_id, staging, opts).await?;
            Ok(csi::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.staging_target_path, "staging_target_path")?;
            let staging = PathBuf::from(&req.staging_target_path);
            volumes.unstage(&req.volume_id, staging).await?;
            Ok(csi::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.target_path, "target_path")?;
            let cap = capability(req.volume_capability.as_ref())?;
            let opts = PublishOptions {
                read_only: req.readonly || is_reader_only(cap),
                mount_flags: mount_flags(cap),
                block: is_block(cap),
                single_writer: is_single_writer(cap),
            };
            let target = PathBuf::from(&req.target_path);
            if is_ephemeral(&req.volume_context) {
                volumes
                    .publish_ephemeral(&req.volume_id, target, req.volume_context, opts)
                    .await?;
                return Ok(csi::NodePublishVolumeResponse {});
            }
            require(&req.staging_target_path, "staging_target_path")?;
            let staging = PathBuf::from(&req.staging_target_path);
            volumes
                .publish(&req.volume_id, staging, target, opts)
                .await?;
            Ok(csi::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.target_path, "target_path")?;
            let target = PathBuf::from(&req.target_path);
            volumes.unpublish(&req.volume_id, target).await?;
            Ok(csi::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.volume_path, "volume_path")?;
            let path = PathBuf::from(&req.volume_path);
            let (u, health) = volumes.stats(&req.volume_id, path).await?;
            use csi::volume_usage::Unit;
            let mut list = vec![usage(
                Unit::Bytes,
                u.total_bytes,
                u.used_bytes,
                u.available_bytes,
            )];
            if u.total_inodes > 0 {
                list.push(usage(
                    Unit::Inodes,
                    u.total_inodes,
                    u.used_inodes,
                    u.available_inodes,
                ));
            }
            Ok(csi::NodeGetVolumeStatsResponse {
                usage: list,
                volume_condition: Some(condition(&health)),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.volume_path, "volume_path")?;
            if let Some(cap) = &req.volume_capability {
                check_capability(cap).map_err(Status::invalid_argument)?;
            }
            let path = PathBuf::from(&req.volume_path);
            let capacity = volumes.expand_on_node(&req.volume_id, path).await?;
            Ok(csi::NodeExpandVolumeResponse {
                capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::rpc::Type;
        let cap = |t: Type| csi::NodeServiceCapability {
            r#type: Some(csi::node_service_capability::Type::Rpc(
                csi::node_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        crate::grpc::rpc::respond(async {
            Ok(csi::NodeGetCapabilitiesResponse {
                capabilities: vec![
                    cap(Type::StageUnstageVolume),
                    cap(Type::GetVolumeStats),
                    cap(Type::ExpandVolume),
                    cap(Type::VolumeCondition),
                    cap(Type::SingleNodeMultiWriter),
                ],
            })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let driver = Arc::clone(&self.driver);
        crate::grpc::rpc::respond(async move {
            Ok(csi::NodeGetInfoResponse {
                node_id: driver.config.node_id.clone(),
                max_volumes_per_node: driver.config.max_volumes_per_node,
                accessible_topology: Some(driver.topology()),
            })
        })
        .await
    }
}
