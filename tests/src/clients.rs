//! CSI clients over a daemon's socket, and builders of the requests tests send.

use std::collections::HashMap;
use std::path::Path;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::controller_client::ControllerClient;
use stowage_proto::csi::v1::identity_client::IdentityClient;
use stowage_proto::csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

use crate::*;

/// CSI clients over one channel.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Identity.
    pub identity: IdentityClient<Channel>,
    /// Controller.
    pub controller: ControllerClient<Channel>,
    /// Node.
    pub node: NodeClient<Channel>,
}

/// A single-node-writer mount capability, optionally with an fs_type.
pub fn mount_cap(fs_type: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs_type.to_string(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
    }
}

/// A single-node-writer raw block capability.
pub fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
    }
}

/// A content source naming snapshot `id`.
pub fn snapshot_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.to_string(),
            },
        )),
    }
}

/// A content source naming volume `id` (a clone).
pub fn volume_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.to_string(),
            },
        )),
    }
}

/// Total bytes of the filesystem mounted at `path`, as df sees it (statvfs).
pub fn fs_total_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path)
        .unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()));
    st.blocks() as u64 * st.fragment_size() as u64
}

/// A CreateVolume request.
pub fn create_req(name: &str, bytes: i64, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap("")],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

impl Clients {
    /// Creates a volume and returns its id.
    pub async fn create(&mut self, name: &str, bytes: i64, params: &[(&str, &str)]) -> String {
        self.create_volume(name, bytes, params).await.volume_id
    }

    /// Creates a volume and returns it (its context included).
    pub async fn create_volume(
        &mut self,
        name: &str,
        bytes: i64,
        params: &[(&str, &str)],
    ) -> csi::Volume {
        self.controller
            .create_volume(create_req(name, bytes, params))
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume")
    }

    /// Creates a volume from `source` (a snapshot to restore or a volume to clone)
    /// and returns it.
    pub async fn create_from(
        &mut self,
        name: &str,
        bytes: i64,
        params: &[(&str, &str)],
        source: csi::VolumeContentSource,
    ) -> Result<csi::Volume, tonic::Status> {
        let mut req = create_req(name, bytes, params);
        req.volume_content_source = Some(source);
        Ok(self
            .controller
            .create_volume(req)
            .await?
            .into_inner()
            .volume
            .expect("volume"))
    }

    /// Publishes `id` to the daemon's node (ControllerPublish), then stages it at
    /// `staging`, both with a plain mount capability.
    pub async fn stage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.stage_with(id, staging, mount_cap("")).await
    }

    /// Publishes `id` to the daemon's node (ControllerPublish), then stages it at
    /// `staging`, both with capability `cap`.
    pub async fn stage_with(
        &mut self,
        id: &str,
        staging: &Path,
        cap: csi::VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: NODE_ID.to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await?;
        self.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Publishes `id` from `staging` at `target` with a plain mount capability.
    pub async fn publish(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.publish_with(id, staging, target, readonly, mount_cap(""))
            .await
    }

    /// Publishes `id` from `staging` at `target` with capability `cap`.
    pub async fn publish_with(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
        cap: csi::VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Stages `id` at `staging` and publishes it read-write at `target`.
    pub async fn stage_and_publish(&mut self, id: &str, staging: &Path, target: &Path) {
        self.stage(id, staging).await.expect("stage");
        self.publish(id, staging, target, false)
            .await
            .expect("publish");
    }

    /// Unpublishes `id` from `target` and unstages it from `staging`.
    pub async fn unpublish_and_unstage(&mut self, id: &str, staging: &Path, target: &Path) {
        self.unpublish(id, target).await.expect("unpublish");
        self.unstage(id, staging).await.expect("unstage");
    }

    /// The byte usage NodeGetVolumeStats reports for `id` at `path`.
    pub async fn byte_usage(&mut self, id: &str, path: &Path) -> csi::VolumeUsage {
        self.node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.to_string(),
                volume_path: path.display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .expect("NodeGetVolumeStats")
            .into_inner()
            .usage
            .into_iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
            .expect("byte usage")
    }

    /// Takes snapshot `name` of volume `source`.
    pub async fn snapshot(&mut self, name: &str, source: &str) -> csi::Snapshot {
        self.controller
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.to_string(),
                name: name.to_string(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("snapshot")
    }

    /// GetSnapshot of `id`.
    pub async fn get_snapshot(&mut self, id: &str) -> Result<csi::Snapshot, tonic::Status> {
        Ok(self
            .controller
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: id.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .expect("snapshot"))
    }

    /// Ids of the snapshots ListSnapshots returns for `source_volume_id` ("" for all).
    pub async fn list_snapshot_ids(&mut self, source_volume_id: &str) -> Vec<String> {
        self.controller
            .list_snapshots(csi::ListSnapshotsRequest {
                source_volume_id: source_volume_id.to_string(),
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
            .collect()
    }

    /// Deletes snapshot `id`.
    pub async fn delete_snapshot(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Unpublishes `id` from `target`.
    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.to_string(),
                target_path: target.display().to_string(),
            })
            .await
            .map(|_| ())
    }

    /// Unstages `id` from `staging`, then unpublishes it from the node
    /// (ControllerUnpublish).
    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
            })
            .await?;
        self.controller
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: NODE_ID.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Deletes `id`.
    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Ids of all volumes ListVolumes returns.
    pub async fn list_ids(&mut self) -> Vec<String> {
        self.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    }
}
