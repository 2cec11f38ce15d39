//! Stowage's daemon around a volume-core [`VolumeManager`](volume_core::VolumeManager)
//! and each of its front doors: the CSI Identity, Controller, Node and GroupController
//! services and the admin service on the unix socket, the peer service and the
//! replication scheduler between daemons, the Docker/Podman volume plugin, metrics;
//! the glue the `stowaged` binary wires together. The `vol` CLI is its own crate
//! (`stowage-cli`).

pub mod cluster;
pub mod driver;
pub mod endpoint;
pub mod grpc;
pub mod metrics;
pub mod plugin;
pub mod replication;
pub mod server;
pub mod service;

pub use driver::{Driver, DriverConfig};

/// The CSI driver name (GetPluginInfo, CSIDriver object, StorageClass provisioner).
pub const DRIVER_NAME: &str = "csi.stowage.dev";
/// Topology key under which a volume's node is reported.
pub const TOPOLOGY_KEY: &str = "topology.stowage.dev/node";
