//! Stowage's gRPC surface: the CSI Identity, Controller and Node services over a
//! volume-core [`VolumeManager`](volume_core::VolumeManager), the unix-socket server
//! that hosts them, and the glue the `stowaged` binary wires together.

pub mod admin;
pub mod cli;
pub mod client;
pub mod controller;
pub mod driver;
pub mod endpoint;
pub mod group;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod plugin;
pub mod replicate;
pub mod rpc;
pub mod server;
pub mod status;

pub use driver::{Driver, DriverConfig};

/// The CSI driver name (GetPluginInfo, CSIDriver object, StorageClass provisioner).
pub const DRIVER_NAME: &str = "csi.stowage.dev";
/// Topology key under which a volume's node is reported.
pub const TOPOLOGY_KEY: &str = "topology.stowage.dev/node";
