//! The state the CSI services share: the volume manager and this node's identity.

use std::collections::HashMap;
use std::sync::Arc;

use fuse_overlay::layers::LayerStore;
use stowage_proto::csi::v1 as csi;
use volume_core::model::VolumeHealth;
use volume_core::{ContentSource, SnapshotRecord, VolumeManager, VolumeRecord};

use crate::TOPOLOGY_KEY;

/// The volume context key naming a volume's layout (`btrfs-nocow`, `host-image`, ...).
pub const LAYOUT_CONTEXT_KEY: &str = "layout";

/// Node identity and limits, from the daemon's flags.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's id (NodeGetInfo, topology).
    pub node_id: String,
    /// Volumes this node accepts (0: no limit).
    pub max_volumes_per_node: i64,
    /// Refuse NodeStage of a volume not ControllerPublished to this node. Off for COs
    /// that skip ControllerPublish for node-local volumes (Kubernetes with
    /// `attachRequired: false`).
    pub require_controller_publish: bool,
    /// The `stowage-overlay` program that mounts image volumes with `overlay=fuse`.
    pub overlay_program: std::path::PathBuf,
    /// Statically configured peers and the cluster secret.
    pub peers: crate::peer::Peers,
    /// Rebuild lost or damaged metadata from the pool at start (else refuse to start).
    pub rebuild_metadata: bool,
    /// What one layer import may take of the host.
    pub layer_limits: fuse_overlay::layers::ImportLimits,
    /// Quota of the layer store's subvolume on a btrfs pool (0: a quarter of the pool).
    pub layer_store_size: u64,
}

/// Shared by the Identity, Controller and Node services.
#[derive(Debug)]
pub struct Driver {
    /// The volume manager (blocking calls: run them through [`crate::rpc::blocking`]).
    pub manager: Arc<VolumeManager>,
    /// Node identity and limits.
    pub config: DriverConfig,
    /// Metrics every RPC is recorded in.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Read-only image layers (admin `ImportLayer`/`ListLayers`/`RemoveLayer`).
    pub layers: Arc<LayerStore>,
    /// Runtime replication state (links, cut-off streams kept to resume).
    pub replication: crate::replicate::ReplicationState,
}

impl Driver {
    /// Wraps a reconciled manager.
    pub fn new(manager: VolumeManager, config: DriverConfig, layers: LayerStore) -> Arc<Self> {
        Arc::new(Driver {
            manager: Arc::new(manager),
            config,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            layers: Arc::new(layers),
            replication: Default::default(),
        })
    }

    /// The volume's health as the controller reports it: its storage, and its
    /// replicas when it is replicated.
    pub fn health(&self, rec: &VolumeRecord) -> VolumeHealth {
        crate::replicate::health(self, rec, self.manager.controller_health(rec))
    }

    /// This node's topology segment.
    pub fn topology(&self) -> csi::Topology {
        csi::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), self.config.node_id.clone())]),
        }
    }

    /// True when `topology` names this node (or names no node at all).
    pub fn topology_matches(&self, topology: &csi::Topology) -> bool {
        topology
            .segments
            .get(TOPOLOGY_KEY)
            .is_none_or(|n| *n == self.config.node_id)
    }

    /// The CSI view of a volume record; its context is the parameters it was created
    /// with and [`LAYOUT_CONTEXT_KEY`].
    pub fn to_csi_volume(&self, rec: &VolumeRecord) -> csi::Volume {
        csi::Volume {
            capacity_bytes: i64::try_from(rec.capacity).unwrap_or(i64::MAX),
            volume_id: rec.id.clone(),
            volume_context: rec
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(std::iter::once((
                    LAYOUT_CONTEXT_KEY.to_string(),
                    self.manager.layout_of(rec).to_string(),
                )))
                .collect(),
            content_source: rec.content_source.as_ref().map(content_source),
            accessible_topology: std::iter::once(self.topology())
                .chain(
                    rec.replication
                        .iter()
                        .flat_map(|s| &s.nodes)
                        .map(|n| csi::Topology {
                            segments: HashMap::from([(TOPOLOGY_KEY.to_string(), n.clone())]),
                        }),
                )
                .collect(),
        }
    }

    /// Node ids the volume is published to (ControllerPublish).
    pub fn published_nodes(&self, rec: &VolumeRecord) -> Vec<String> {
        rec.attachments.iter().map(|a| a.node_id.clone()).collect()
    }
}

/// The CSI form of a volume's content source.
pub fn content_source(src: &ContentSource) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    csi::VolumeContentSource {
        r#type: Some(match src {
            ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            ContentSource::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    }
}

/// The CSI view of a snapshot record.
pub fn to_csi_snapshot(s: &SnapshotRecord) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(s.created_at).unwrap_or(i64::MAX),
            nanos: i32::try_from(s.created_nanos).unwrap_or(0),
        }),
        ready_to_use: true,
        group_snapshot_id: s.group_id.clone().unwrap_or_default(),
    }
}

/// The CSI condition of a health value.
pub fn condition(h: &VolumeHealth) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: h.abnormal,
        message: h.message.clone(),
    }
}

/// Checks that a capability is one this driver serves; the error says why not.
pub fn check_capability(cap: &csi::VolumeCapability) -> Result<(), String> {
    use csi::volume_capability::access_mode::Mode;
    if cap.access_type.is_none() {
        return Err("volume capability has no access type".into());
    }
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => Ok(()),
        Mode::Unknown => Err("volume capability has no access mode".into()),
        // A volume lives in one node's pool: no other node can mount it.
        other => Err(format!(
            "access mode {} is not supported: volumes are local to one node",
            other.as_str_name()
        )),
    }
}

/// The mount fs_type of a capability, if it names one.
pub fn mount_fs_type(cap: &csi::VolumeCapability) -> Option<&str> {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) if !m.fs_type.is_empty() => {
            Some(m.fs_type.as_str())
        }
        _ => None,
    }
}

/// The mount flags of a capability.
pub fn mount_flags(cap: &csi::VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
        _ => Vec::new(),
    }
}

/// True when the capability asks for raw block access.
pub fn is_block(cap: &csi::VolumeCapability) -> bool {
    matches!(
        cap.access_type,
        Some(csi::volume_capability::AccessType::Block(_))
    )
}

/// True when the capability's access mode is SINGLE_NODE_SINGLE_WRITER.
pub fn is_single_writer(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode
        .as_ref()
        .is_some_and(|m| Mode::try_from(m.mode) == Ok(Mode::SingleNodeSingleWriter))
}

/// True when the capability's access mode allows no writes.
pub fn is_reader_only(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(
            Mode::try_from(m.mode),
            Ok(Mode::SingleNodeReaderOnly) | Ok(Mode::MultiNodeReaderOnly)
        )
    })
}
