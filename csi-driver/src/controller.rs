//! CSI Controller: create, delete, validate, list, capacity and get. Snapshots,
//! expansion, ControllerPublish and ModifyVolume are not offered yet (issue "CSI data
//! services") and answer UNIMPLEMENTED, as the capabilities we advertise promise.

use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::controller_server::Controller;
use tonic::{Request, Response, Status};
use volume_core::manager::is_valid_id;
use volume_core::{CreateRequest, VolumeParams};

use crate::driver::{Driver, check_capability, condition, mount_fs_type};
use crate::rpc::{blocking, observe, require};

/// Prefix of our ListVolumes pagination tokens; anything else is refused with ABORTED.
const TOKEN_PREFIX: &str = "after:";

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    /// Serves the controller for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        ControllerService { driver }
    }
}

fn bytes(v: i64, field: &str) -> Result<u64, Status> {
    u64::try_from(v).map_err(|_| Status::invalid_argument(format!("{field} is negative")))
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not supported by this driver yet"
    )))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe("CreateVolume", "", &meta, async move {
            require(&req.name, "name")?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities are required"));
            }
            for cap in &req.volume_capabilities {
                check_capability(cap).map_err(Status::invalid_argument)?;
            }
            if req.volume_content_source.is_some() {
                return Err(Status::invalid_argument(
                    "creating from a snapshot or volume is not supported yet",
                ));
            }
            if let Some(topo) = &req.accessibility_requirements
                && !topo.requisite.is_empty()
                && !topo.requisite.iter().any(|t| driver.topology_matches(t))
            {
                return Err(Status::resource_exhausted(format!(
                    "no requisite topology includes node {}",
                    driver.config.node_id
                )));
            }
            let fs_type = req.volume_capabilities.iter().find_map(mount_fs_type);
            let params = VolumeParams::parse(&req.parameters, fs_type)
                .map_err(|e| crate::status::to_status(&e))?;
            let (required, limit) = match &req.capacity_range {
                Some(r) => (
                    bytes(r.required_bytes, "required_bytes")?,
                    bytes(r.limit_bytes, "limit_bytes")?,
                ),
                None => (0, 0),
            };
            let create = CreateRequest {
                name: req.name.clone(),
                required_bytes: required,
                limit_bytes: limit,
                params,
            };
            let manager = Arc::clone(&driver.manager);
            let rec = blocking(move || manager.create(&create)).await?;
            Ok(csi::CreateVolumeResponse {
                volume: Some(driver.to_csi_volume(&rec)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe("DeleteVolume", &req.volume_id.clone(), &meta, async move {
            require(&req.volume_id, "volume_id")?;
            blocking(move || manager.delete(&req.volume_id)).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        unimplemented("ControllerPublishVolume")
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        unimplemented("ControllerUnpublishVolume")
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            "ValidateVolumeCapabilities",
            &req.volume_id.clone(),
            &meta,
            async move {
                require(&req.volume_id, "volume_id")?;
                if req.volume_capabilities.is_empty() {
                    return Err(Status::invalid_argument("volume_capabilities are required"));
                }
                let id = req.volume_id.clone();
                let rec = blocking(move || manager.get(&id)).await?;
                let mut problems = Vec::new();
                for cap in &req.volume_capabilities {
                    if let Err(why) = check_capability(cap) {
                        problems.push(why);
                    }
                    if let (Some(want), Some(have)) = (mount_fs_type(cap), rec.fs)
                        && want != have.as_str()
                    {
                        problems.push(format!("volume holds {have}, not {want}"));
                    }
                }
                if !req.parameters.is_empty()
                    && let Err(e) = VolumeParams::parse(&req.parameters, None)
                {
                    problems.push(e.to_string());
                }
                Ok(if problems.is_empty() {
                    csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                            volume_context: req.volume_context,
                            volume_capabilities: req.volume_capabilities,
                            parameters: req.parameters,
                            mutable_parameters: req.mutable_parameters,
                        }),
                        message: String::new(),
                    }
                } else {
                    csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: problems.join("; "),
                    }
                })
            },
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe("ListVolumes", "", &meta, async move {
            if req.max_entries < 0 {
                return Err(Status::invalid_argument("max_entries is negative"));
            }
            let after = if req.starting_token.is_empty() {
                None
            } else {
                match req.starting_token.strip_prefix(TOKEN_PREFIX) {
                    Some(id) if is_valid_id(id) => Some(id.to_string()),
                    _ => {
                        return Err(Status::aborted(format!(
                            "starting_token {:?} was not issued by this driver",
                            req.starting_token
                        )));
                    }
                }
            };
            let limit = if req.max_entries == 0 {
                usize::MAX
            } else {
                req.max_entries as usize
            };
            let manager = Arc::clone(&driver.manager);
            // One more than asked, to know whether another page exists.
            let mut recs =
                blocking(move || manager.list(after.as_deref(), limit.saturating_add(1))).await?;
            let next_token = if recs.len() > limit {
                recs.truncate(limit);
                recs.last()
                    .map(|r| format!("{TOKEN_PREFIX}{}", r.id))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let entries = recs
                .iter()
                .map(|rec| csi::list_volumes_response::Entry {
                    volume: Some(driver.to_csi_volume(rec)),
                    status: Some(csi::list_volumes_response::VolumeStatus {
                        published_node_ids: driver.published_nodes(rec),
                        volume_condition: Some(condition(&driver.manager.controller_health(rec))),
                    }),
                })
                .collect();
            Ok(csi::ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe("GetCapacity", "", &meta, async move {
            for cap in &req.volume_capabilities {
                check_capability(cap).map_err(Status::invalid_argument)?;
            }
            let fs_type = req.volume_capabilities.iter().find_map(mount_fs_type);
            VolumeParams::parse(&req.parameters, fs_type)
                .map_err(|e| crate::status::to_status(&e))?;
            if let Some(t) = &req.accessible_topology
                && !driver.topology_matches(t)
            {
                return Ok(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: None,
                });
            }
            let manager = Arc::clone(&driver.manager);
            let usage = blocking(move || manager.capacity()).await?;
            let available = i64::try_from(usage.available).unwrap_or(i64::MAX);
            Ok(csi::GetCapacityResponse {
                available_capacity: available,
                maximum_volume_size: Some(available),
                minimum_volume_size: Some(1 << 20),
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::rpc::Type;
        let cap = |t: Type| csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(
                csi::controller_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        observe("ControllerGetCapabilities", "", request.metadata(), async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: vec![
                    cap(Type::CreateDeleteVolume),
                    cap(Type::ListVolumes),
                    cap(Type::GetCapacity),
                    cap(Type::GetVolume),
                    cap(Type::VolumeCondition),
                ],
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        _request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        unimplemented("CreateSnapshot")
    }

    async fn delete_snapshot(
        &self,
        _request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        unimplemented("DeleteSnapshot")
    }

    async fn list_snapshots(
        &self,
        _request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        unimplemented("ListSnapshots")
    }

    async fn get_snapshot(
        &self,
        _request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        unimplemented("GetSnapshot")
    }

    async fn controller_expand_volume(
        &self,
        _request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        unimplemented("ControllerExpandVolume")
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            "ControllerGetVolume",
            &req.volume_id.clone(),
            &meta,
            async move {
                require(&req.volume_id, "volume_id")?;
                let manager = Arc::clone(&driver.manager);
                let (rec, health) = blocking(move || {
                    let rec = manager.get(&req.volume_id)?;
                    let health = manager.controller_health(&rec);
                    Ok((rec, health))
                })
                .await?;
                Ok(csi::ControllerGetVolumeResponse {
                    volume: Some(driver.to_csi_volume(&rec)),
                    status: Some(csi::controller_get_volume_response::VolumeStatus {
                        published_node_ids: driver.published_nodes(&rec),
                        volume_condition: Some(condition(&health)),
                    }),
                })
            },
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        unimplemented("ControllerModifyVolume")
    }
}
