//! CSI GroupController: crash-consistent snapshots of several volumes at once (the
//! staged loop volumes' filesystems are frozen together while the group is taken).

use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::group_controller_server::GroupController;
use tonic::{Request, Response, Status};
use volume_core::{GroupSnapshotRecord, SnapshotRecord};

use crate::driver::Driver;
use crate::grpc::convert::to_csi_snapshot;
use crate::grpc::rpc::require;
use crate::service::Volumes;

/// The GroupController service.
#[derive(Debug, Clone)]
pub struct GroupControllerService {
    driver: Arc<Driver>,
}

impl GroupControllerService {
    /// Serves group snapshots for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        GroupControllerService { driver }
    }
}

fn to_csi_group(g: &GroupSnapshotRecord, members: &[SnapshotRecord]) -> csi::VolumeGroupSnapshot {
    csi::VolumeGroupSnapshot {
        group_snapshot_id: g.id.clone(),
        snapshots: members.iter().map(to_csi_snapshot).collect(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(g.created_at).unwrap_or(i64::MAX),
            nanos: i32::try_from(g.created_nanos).unwrap_or(0),
        }),
        ready_to_use: true,
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        use csi::group_controller_service_capability::rpc::Type;
        crate::grpc::rpc::respond(async {
            Ok(csi::GroupControllerGetCapabilitiesResponse {
                capabilities: vec![csi::GroupControllerServiceCapability {
                    r#type: Some(csi::group_controller_service_capability::Type::Rpc(
                        csi::group_controller_service_capability::Rpc {
                            r#type: Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                        },
                    )),
                }],
            })
        })
        .await
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = Volumes::new(Arc::clone(&self.driver));
        crate::grpc::rpc::respond(async move {
            require(&req.name, "name")?;
            if req.source_volume_ids.is_empty() {
                return Err(Status::invalid_argument("source_volume_ids are required"));
            }
            if let Some(key) = req
                .parameters
                .keys()
                .find(|k| !k.starts_with("csi.storage.k8s.io/"))
            {
                return Err(Status::invalid_argument(format!(
                    "unknown group snapshot parameter {key:?}"
                )));
            }
            let (group, members) = volumes
                .snapshot_group(&req.name, req.source_volume_ids)
                .await?;
            Ok(csi::CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(to_csi_group(&group, &members)),
            })
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = Volumes::new(Arc::clone(&self.driver));
        crate::grpc::rpc::respond(async move {
            require(&req.group_snapshot_id, "group_snapshot_id")?;
            volumes
                .delete_group(&req.group_snapshot_id, req.snapshot_ids)
                .await?;
            Ok(csi::DeleteVolumeGroupSnapshotResponse {})
        })
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = Volumes::new(Arc::clone(&self.driver));
        crate::grpc::rpc::respond(async move {
            require(&req.group_snapshot_id, "group_snapshot_id")?;
            let (group, members) = volumes.get_group(&req.group_snapshot_id).await?;
            Ok(csi::GetVolumeGroupSnapshotResponse {
                group_snapshot: Some(to_csi_group(&group, &members)),
            })
        })
        .await
    }
}
