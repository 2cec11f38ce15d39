//! Stowage's admin service (stowage.proto), served beside CSI on the same socket: what
//! `vol` speaks. It works in names as people do (ids are accepted too) and adds what
//! CSI has no words for, such as attaching a volume into a running container.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use volume_core::snapshot::SnapshotFilter;
use volume_core::{ContentSource, CreateRequest, SnapshotRecord, VolumeParams, VolumeRecord};

use crate::driver::Driver;
use crate::rpc::{blocking, observe, require};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    driver: Arc<Driver>,
}

impl AdminService {
    /// Serves the admin API for `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        AdminService { driver }
    }
}

/// The admin view of a volume.
pub fn to_pb_volume(driver: &Driver, rec: &VolumeRecord) -> pb::Volume {
    let health = match driver.manager.node_health(rec, None) {
        Ok(h) if h.abnormal => h,
        _ => driver.manager.controller_health(rec),
    };
    pb::Volume {
        id: rec.id.clone(),
        name: rec.name.clone(),
        kind: rec.kind.to_string(),
        fs_type: rec.fs.map(|f| f.to_string()).unwrap_or_default(),
        capacity_bytes: rec.capacity,
        capacity_enforced: rec.capacity_enforced,
        created_at: rec.created_at,
        staging_path: rec
            .staging
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default(),
        published_at: rec
            .publications
            .iter()
            .map(|p| p.target.display().to_string())
            .collect(),
        attached_nodes: rec.attachments.iter().map(|a| a.node_id.clone()).collect(),
        content_source: match &rec.content_source {
            Some(ContentSource::Snapshot(s)) => format!("snapshot:{s}"),
            Some(ContentSource::Volume(v)) => format!("volume:{v}"),
            None => String::new(),
        },
        parameters: rec.parameters.clone().into_iter().collect(),
        mutable_parameters: rec.mutable_parameters.clone().into_iter().collect(),
        condition: Some(pb::Condition {
            abnormal: health.abnormal,
            message: health.message,
        }),
        ephemeral: rec.ephemeral,
        attached_into: rec
            .container_mounts
            .iter()
            .map(|m| format!("{}:{}", m.pid, m.target.display()))
            .collect(),
    }
}

fn to_pb_snapshot(s: &SnapshotRecord) -> pb::Snapshot {
    pb::Snapshot {
        id: s.id.clone(),
        name: s.name.clone(),
        source_volume_id: s.source_volume_id.clone(),
        size_bytes: s.size_bytes,
        created_at: s.created_at,
        group_id: s.group_id.clone().unwrap_or_default(),
    }
}

/// Splits admin create parameters into volume parameters and mutable ones.
fn split_parameters(
    params: &HashMap<String, String>,
) -> (HashMap<String, String>, BTreeMap<String, String>) {
    let mut fixed = HashMap::new();
    let mut mutable = BTreeMap::new();
    for (k, v) in params {
        if k == volume_core::modify::COMPRESSION {
            mutable.insert(k.clone(), v.clone());
        } else {
            fixed.insert(k.clone(), v.clone());
        }
    }
    (fixed, mutable)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.Version",
            "",
            request.metadata(),
            async move {
                Ok(pb::VersionResponse {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    driver_name: crate::DRIVER_NAME.to_string(),
                    node_id: driver.config.node_id.clone(),
                })
            },
        )
        .await
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.CreateVolume",
            "",
            &meta,
            async move {
                require(&req.name, "name")?;
                let (fixed, mutable) = split_parameters(&req.parameters);
                let params =
                    VolumeParams::parse(&fixed, None).map_err(|e| crate::status::to_status(&e))?;
                let mut create =
                    CreateRequest::new(req.name.clone(), req.capacity_bytes, 0, params);
                create.mutable_parameters = mutable;
                let manager = Arc::clone(&driver.manager);
                let rec = blocking(move || manager.create(&create)).await?;
                Ok(pb::VolumeResponse {
                    volume: Some(to_pb_volume(&driver, &rec)),
                })
            },
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.ListVolumes",
            "",
            request.metadata(),
            async move {
                let manager = Arc::clone(&driver.manager);
                let mut recs = blocking(move || manager.list(None, usize::MAX)).await?;
                recs.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(pb::ListVolumesResponse {
                    volumes: recs.iter().map(|r| to_pb_volume(&driver, r)).collect(),
                })
            },
        )
        .await
    }

    async fn get_volume(
        &self,
        request: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.GetVolume",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                let manager = Arc::clone(&driver.manager);
                let rec = blocking(move || manager.resolve(&req.volume)).await?;
                Ok(pb::VolumeResponse {
                    volume: Some(to_pb_volume(&driver, &rec)),
                })
            },
        )
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            &self.driver.metrics,
            "Admin.DeleteVolume",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                blocking(move || {
                    let rec = manager.resolve(&req.volume)?;
                    manager.delete(&rec.id)
                })
                .await?;
                Ok(pb::DeleteVolumeResponse {})
            },
        )
        .await
    }

    async fn clone_volume(
        &self,
        request: Request<pb::CloneVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.CloneVolume",
            "",
            &meta,
            async move {
                require(&req.name, "name")?;
                if req.source.is_empty() == req.snapshot.is_empty() {
                    return Err(Status::invalid_argument(
                        "give exactly one of a source volume or a snapshot",
                    ));
                }
                let manager = Arc::clone(&driver.manager);
                let rec = blocking(move || {
                    let (source, kind, fs) = if req.snapshot.is_empty() {
                        let src = manager.resolve(&req.source)?;
                        (ContentSource::Volume(src.id), src.kind, src.fs)
                    } else {
                        let snap = manager.resolve_snapshot(&req.snapshot)?;
                        (ContentSource::Snapshot(snap.id), snap.kind, snap.fs)
                    };
                    let mut p = HashMap::from([("kind".to_string(), kind.to_string())]);
                    if let Some(fs) = fs {
                        p.insert("fsType".to_string(), fs.to_string());
                    }
                    let params = VolumeParams::parse(&p, None)?;
                    let mut create =
                        CreateRequest::new(req.name.clone(), req.capacity_bytes, 0, params);
                    create.source = Some(source);
                    manager.create(&create)
                })
                .await?;
                Ok(pb::VolumeResponse {
                    volume: Some(to_pb_volume(&driver, &rec)),
                })
            },
        )
        .await
    }

    async fn expand_volume(
        &self,
        request: Request<pb::ExpandVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.ExpandVolume",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                let manager = Arc::clone(&driver.manager);
                let rec = blocking(move || {
                    let rec = manager.resolve(&req.volume)?;
                    manager.expand(&rec.id, req.capacity_bytes, 0)?;
                    // On this node, finish the job: grow a mounted filesystem too.
                    let rec = manager.get(&rec.id)?;
                    if let Some(stage) = &rec.staging
                        && rec.filesystem_bytes() < rec.capacity
                    {
                        manager.expand_on_node(&rec.id, &stage.path)?;
                    }
                    manager.get(&rec.id)
                })
                .await?;
                Ok(pb::VolumeResponse {
                    volume: Some(to_pb_volume(&driver, &rec)),
                })
            },
        )
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            &self.driver.metrics,
            "Admin.CreateSnapshot",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                require(&req.name, "name")?;
                let snap = blocking(move || {
                    let rec = manager.resolve(&req.volume)?;
                    manager.create_snapshot(&req.name, &rec.id)
                })
                .await?;
                Ok(pb::SnapshotResponse {
                    snapshot: Some(to_pb_snapshot(&snap)),
                })
            },
        )
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            &self.driver.metrics,
            "Admin.ListSnapshots",
            "",
            &meta,
            async move {
                let snaps = blocking(move || {
                    let filter = SnapshotFilter {
                        snapshot_id: None,
                        source_volume_id: if req.volume.is_empty() {
                            None
                        } else {
                            Some(manager.resolve(&req.volume)?.id)
                        },
                    };
                    manager.list_snapshots(&filter, None, usize::MAX)
                })
                .await?;
                Ok(pb::ListSnapshotsResponse {
                    snapshots: snaps.iter().map(to_pb_snapshot).collect(),
                })
            },
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            &self.driver.metrics,
            "Admin.DeleteSnapshot",
            "",
            &meta,
            async move {
                require(&req.snapshot, "snapshot")?;
                blocking(move || {
                    let snap = manager.resolve_snapshot(&req.snapshot)?;
                    manager.delete_snapshot(&snap.id)
                })
                .await?;
                Ok(pb::DeleteSnapshotResponse {})
            },
        )
        .await
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::AttachVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let driver = Arc::clone(&self.driver);
        observe(
            &self.driver.metrics,
            "Admin.AttachVolume",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                require(&req.target, "target")?;
                let manager = Arc::clone(&driver.manager);
                let target = PathBuf::from(&req.target);
                let rec = blocking(move || {
                    manager.attach_into(&req.volume, req.pid, &target, req.read_only)
                })
                .await?;
                Ok(pb::AttachVolumeResponse {
                    volume: Some(to_pb_volume(&driver, &rec)),
                })
            },
        )
        .await
    }

    async fn detach_volume(
        &self,
        request: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::DetachVolumeResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let manager = Arc::clone(&self.driver.manager);
        observe(
            &self.driver.metrics,
            "Admin.DetachVolume",
            "",
            &meta,
            async move {
                require(&req.volume, "volume")?;
                require(&req.target, "target")?;
                let target = PathBuf::from(&req.target);
                blocking(move || manager.detach_from(&req.volume, req.pid, &target)).await?;
                Ok(pb::DetachVolumeResponse {})
            },
        )
        .await
    }
}
