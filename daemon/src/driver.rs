//! The state the CSI services share: the volume manager and this node's identity.

use std::collections::HashMap;
use std::sync::Arc;

use layer_store::LayerStore;
use stowage_proto::csi::v1 as csi;
use volume_core::{VolumeManager, VolumeRecord};

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
    pub peers: crate::replication::link::Peers,
    /// Rebuild lost or damaged metadata from the pool at start (else refuse to start).
    pub rebuild_metadata: bool,
    /// What one layer import may take of the host.
    pub layer_limits: layer_store::ImportLimits,
    /// Quota of the layer store's subvolume on a btrfs pool (0: a quarter of the pool).
    pub layer_store_size: u64,
}

/// Shared by the Identity, Controller and Node services.
#[derive(Debug)]
pub struct Driver {
    /// The volume manager (blocking: the service layer runs it on the blocking pool).
    pub manager: Arc<VolumeManager>,
    /// Node identity and limits.
    pub config: DriverConfig,
    /// Metrics every RPC is recorded in.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Read-only image layers (admin `ImportLayer`/`ListLayers`/`RemoveLayer`).
    pub layers: Arc<LayerStore>,
    /// Runtime replication state (links, cut-off streams kept to resume).
    pub replication: crate::replication::ReplicationState,
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

    /// Node ids the volume is published to (ControllerPublish).
    pub fn published_nodes(&self, rec: &VolumeRecord) -> Vec<String> {
        rec.attachments.iter().map(|a| a.node_id.clone()).collect()
    }
}
