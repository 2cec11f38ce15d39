//! CSI Controller: volumes (create — empty, restored or cloned —, delete, validate,
//! list, get, expand, modify), ControllerPublish to this node, capacity, and snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::controller_server::Controller;
use tonic::{Request, Response, Status};
use volume_core::manager::snapshot::SnapshotFilter;
use volume_core::manager::{SNAPSHOT_PREFIX, has_id_shape};
use volume_core::{ContentSource, VolumeParams};

use crate::driver::Driver;
use crate::grpc::convert::{
    check_capability, condition, csi_volume, is_block, is_reader_only, mount_fs_type,
    to_csi_snapshot,
};
use crate::grpc::rpc::require;
use crate::service::{Caller, NewVolume, Volumes};

/// Prefix of our ListVolumes pagination tokens; anything else is refused with ABORTED.
const TOKEN_PREFIX: &str = "after:";

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    driver: Arc<Driver>,
    volumes: Volumes,
}

impl ControllerService {
    /// Serves the controller for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        let volumes = Volumes::new(Arc::clone(&driver));
        ControllerService { driver, volumes }
    }
}

fn bytes(v: i64, field: &str) -> Result<u64, Status> {
    u64::try_from(v).map_err(|_| Status::invalid_argument(format!("{field} is negative")))
}

/// Parses a pagination token of ours: `after:<id>` with an id of the given shape.
fn parse_token(token: &str, prefix: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.strip_prefix(TOKEN_PREFIX) {
        Some(id) if has_id_shape(prefix, id) => Ok(Some(id.to_string())),
        _ => Err(Status::aborted(format!(
            "starting_token {token:?} was not issued by this driver"
        ))),
    }
}

fn page_limit(max_entries: i32) -> Result<usize, Status> {
    match max_entries {
        n if n < 0 => Err(Status::invalid_argument("max_entries is negative")),
        0 => Ok(usize::MAX),
        n => Ok(n as usize),
    }
}

fn to_btree(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The Controller capabilities of a node daemon (and of a cluster controller, which
/// carries every call to one).
pub fn capabilities() -> Vec<csi::ControllerServiceCapability> {
    use csi::controller_service_capability::rpc::Type;
    let cap = |t: Type| csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc { r#type: t as i32 },
        )),
    };
    [
        Type::CreateDeleteVolume,
        Type::PublishUnpublishVolume,
        Type::ListVolumes,
        Type::GetCapacity,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        Type::PublishReadonly,
        Type::ExpandVolume,
        Type::ListVolumesPublishedNodes,
        Type::VolumeCondition,
        Type::GetVolume,
        Type::SingleNodeMultiWriter,
        Type::GetSnapshot,
        Type::ModifyVolume,
    ]
    .into_iter()
    .map(cap)
    .collect()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        let driver = Arc::clone(&self.driver);
        crate::grpc::rpc::respond(async move {
            require(&req.name, "name")?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities are required"));
            }
            for cap in &req.volume_capabilities {
                check_capability(cap).map_err(Status::invalid_argument)?;
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
            let (required_bytes, limit_bytes) = match &req.capacity_range {
                Some(r) => (
                    bytes(r.required_bytes, "required_bytes")?,
                    bytes(r.limit_bytes, "limit_bytes")?,
                ),
                None => (0, 0),
            };
            use csi::volume_content_source::Type;
            let source = match req
                .volume_content_source
                .as_ref()
                .and_then(|s| s.r#type.as_ref())
            {
                None => None,
                Some(Type::Snapshot(s)) => {
                    require(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
                    Some(ContentSource::Snapshot(s.snapshot_id.clone()))
                }
                Some(Type::Volume(v)) => {
                    require(&v.volume_id, "volume_content_source.volume.volume_id")?;
                    Some(ContentSource::Volume(v.volume_id.clone()))
                }
            };
            let new = NewVolume {
                name: req.name.clone(),
                required_bytes,
                limit_bytes,
                parameters: req.parameters.clone(),
                mutable_parameters: req.mutable_parameters.clone(),
                fs_type: req
                    .volume_capabilities
                    .iter()
                    .find_map(mount_fs_type)
                    .map(str::to_string),
                source,
                block: req.volume_capabilities.iter().any(is_block),
            };
            let rec = volumes.create(Caller::Orchestrator, new).await?;
            Ok(csi::CreateVolumeResponse {
                volume: Some(csi_volume(&driver, &rec)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            volumes.delete(Caller::Orchestrator, &req.volume_id).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            require(&req.node_id, "node_id")?;
            let cap = req
                .volume_capability
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
            check_capability(cap).map_err(Status::invalid_argument)?;
            let read_only = req.readonly || is_reader_only(cap);
            let max = driver.config.max_volumes_per_node;
            Volumes::new(driver)
                .attach_to_node(&req.volume_id, &req.node_id, read_only, max)
                .await?;
            Ok(csi::ControllerPublishVolumeResponse {
                publish_context: Default::default(),
            })
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            volumes
                .detach_from_node(&req.volume_id, &req.node_id)
                .await?;
            Ok(csi::ControllerUnpublishVolumeResponse {})
        })
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            if req.volume_capabilities.is_empty() {
                return Err(Status::invalid_argument("volume_capabilities are required"));
            }
            let rec = volumes.get(Caller::Orchestrator, &req.volume_id).await?;
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
        })
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let driver = volumes.driver();
            let limit = page_limit(req.max_entries)?;
            let after = parse_token(&req.starting_token, volume_core::manager::VOLUME_PREFIX)?;
            // One more than asked, to know whether another page exists.
            let mut recs = volumes
                .list(Caller::Orchestrator, after, limit.saturating_add(1))
                .await?;
            let next_token = if recs.len() > limit {
                recs.truncate(limit);
                recs.last()
                    .map(|r| format!("{TOKEN_PREFIX}{}", r.volume.id))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let entries = recs
                .iter()
                .map(|view| csi::list_volumes_response::Entry {
                    volume: Some(csi_volume(driver, &view.volume)),
                    status: Some(csi::list_volumes_response::VolumeStatus {
                        published_node_ids: driver.published_nodes(&view.volume),
                        volume_condition: Some(condition(&view.health)),
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
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::rpc::respond(async move {
            for cap in &req.volume_capabilities {
                check_capability(cap).map_err(Status::invalid_argument)?;
            }
            let fs_type = req.volume_capabilities.iter().find_map(mount_fs_type);
            let params = VolumeParams::parse(&req.parameters, fs_type)
                .map_err(|e| crate::grpc::status::to_status(&e))?;
            if let Some(t) = &req.accessible_topology
                && !driver.topology_matches(t)
            {
                return Ok(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: None,
                });
            }
            let available = Volumes::new(driver).capacity(params).await?;
            let available = i64::try_from(available).unwrap_or(i64::MAX);
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
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        crate::grpc::rpc::respond(async {
            Ok(csi::ControllerGetCapabilitiesResponse {
                capabilities: capabilities(),
            })
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.source_volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.name, "name")?;
            require(&req.source_volume_id, "source_volume_id")?;
            if let Some(key) = req
                .parameters
                .keys()
                .find(|k| !k.starts_with("csi.storage.k8s.io/"))
            {
                return Err(Status::invalid_argument(format!(
                    "unknown snapshot parameter {key:?}"
                )));
            }
            let snap = volumes
                .snapshot(Caller::Orchestrator, &req.source_volume_id, &req.name)
                .await?;
            Ok(csi::CreateSnapshotResponse {
                snapshot: Some(to_csi_snapshot(&snap)),
            })
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.snapshot_id, "snapshot_id")?;
            volumes
                .delete_snapshot(Caller::Orchestrator, &req.snapshot_id)
                .await?;
            Ok(csi::DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            let limit = page_limit(req.max_entries)?;
            let after = parse_token(&req.starting_token, SNAPSHOT_PREFIX)?;
            let filter = SnapshotFilter {
                snapshot_id: (!req.snapshot_id.is_empty()).then(|| req.snapshot_id.clone()),
                source_volume_id: (!req.source_volume_id.is_empty())
                    .then(|| req.source_volume_id.clone()),
            };
            let mut snaps = volumes
                .snapshots(Caller::Orchestrator, filter, after, limit.saturating_add(1))
                .await?;
            let next_token = if snaps.len() > limit {
                snaps.truncate(limit);
                snaps
                    .last()
                    .map(|s| format!("{TOKEN_PREFIX}{}", s.id))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            Ok(csi::ListSnapshotsResponse {
                entries: snaps
                    .iter()
                    .map(|s| csi::list_snapshots_response::Entry {
                        snapshot: Some(to_csi_snapshot(s)),
                    })
                    .collect(),
                next_token,
            })
        })
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::rpc::respond(async move {
            require(&req.snapshot_id, "snapshot_id")?;
            let snap = volumes
                .get_snapshot(Caller::Orchestrator, &req.snapshot_id)
                .await?;
            Ok(csi::GetSnapshotResponse {
                snapshot: Some(to_csi_snapshot(&snap)),
            })
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            let range = req
                .capacity_range
                .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
            let required = bytes(range.required_bytes, "required_bytes")?;
            let limit = bytes(range.limit_bytes, "limit_bytes")?;
            if let Some(cap) = &req.volume_capability {
                check_capability(cap).map_err(Status::invalid_argument)?;
            }
            let expanded = volumes
                .expand(Caller::Orchestrator, &req.volume_id, required, limit)
                .await?;
            let (capacity, node_expansion_required) =
                (expanded.capacity, expanded.node_expansion_required);
            Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
                node_expansion_required,
            })
        })
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let driver = Arc::clone(&self.driver);
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            let view = Volumes::new(Arc::clone(&driver))
                .show(Caller::Orchestrator, &req.volume_id)
                .await?;
            let (rec, health) = (view.volume, view.health);
            Ok(csi::ControllerGetVolumeResponse {
                volume: Some(csi_volume(&driver, &rec)),
                status: Some(csi::controller_get_volume_response::VolumeStatus {
                    published_node_ids: driver.published_nodes(&rec),
                    volume_condition: Some(condition(&health)),
                }),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        let volumes = self.volumes.clone();
        crate::grpc::observe::volume(&req.volume_id);
        crate::grpc::rpc::respond(async move {
            require(&req.volume_id, "volume_id")?;
            let params = to_btree(&req.mutable_parameters);
            volumes
                .modify(Caller::Orchestrator, &req.volume_id, params)
                .await?;
            Ok(csi::ControllerModifyVolumeResponse {})
        })
        .await
    }
}
