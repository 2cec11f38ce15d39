//! The records Stowage keeps about each volume: what it is, where it is staged and
//! where it is published. These are what the metadata store persists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a volume's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A directory (a btrfs subvolume with a qgroup limit on a btrfs pool).
    #[default]
    Dir,
    /// A sparse image file holding a filesystem, attached through a loop device.
    Loop,
    /// Read-only image layers from the layer store under an overlay, with a writable
    /// layer per publication kept in the volume's directory (a subvolume, like `Dir`).
    Image,
}

impl VolumeKind {
    /// Parses the `kind` parameter.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dir" => Ok(VolumeKind::Dir),
            "loop" => Ok(VolumeKind::Loop),
            "image" => Ok(VolumeKind::Image),
            other => Err(Error::InvalidArgument(format!(
                "kind {other:?} is not one of dir, loop, image"
            ))),
        }
    }

    /// The parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Dir => "dir",
            VolumeKind::Loop => "loop",
            VolumeKind::Image => "image",
        }
    }
}

impl VolumeKind {
    /// True when the volume's data is a directory (a subvolume) rather than an image
    /// file: `Dir`, and `Image`, whose directory holds the writable layers.
    pub fn is_directory(self) -> bool {
        matches!(self, VolumeKind::Dir | VolumeKind::Image)
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a volume's data sits on the node: which mechanism enforces its size and how
/// many layers a write crosses on its way to the disk (ARCHITECTURE.md, "Data path").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A btrfs subvolume with copy-on-write data (checksummed, compressible); its size
    /// is a qgroup limit.
    BtrfsSubvolume,
    /// A btrfs subvolume whose files are nodatacow (overwritten in place, no
    /// checksums, no compression); its size is a qgroup limit.
    BtrfsNocow,
    /// A directory on a pool that is not btrfs: its size is not enforced.
    Directory,
    /// An image file inside the pool (nodatacow in a subvolume on btrfs) on a loop
    /// device.
    PoolImage,
    /// A preallocated image file on the host's own filesystem, beside the embedded
    /// pool, on one loop device.
    HostImage,
    /// Read-only image layers under an overlay; the writable layers in the volume's
    /// directory.
    Overlay,
}

impl Layout {
    /// The spelling shown in `vol inspect` and the volume context.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::BtrfsSubvolume => "btrfs-subvolume",
            Layout::BtrfsNocow => "btrfs-nocow",
            Layout::Directory => "directory",
            Layout::PoolImage => "pool-image",
            Layout::HostImage => "host-image",
            Layout::Overlay => "overlay",
        }
    }

    /// The layout of a volume recorded before layouts were: what that release made
    /// for `kind` on a pool that is (or is not) btrfs.
    pub fn before_layouts(kind: VolumeKind, btrfs_pool: bool) -> Self {
        match (kind, btrfs_pool) {
            (VolumeKind::Dir, true) => Layout::BtrfsSubvolume,
            (VolumeKind::Dir, false) => Layout::Directory,
            (VolumeKind::Loop, _) => Layout::PoolImage,
            (VolumeKind::Image, _) => Layout::Overlay,
        }
    }
}

impl Layout {
    /// Parses the `layout` parameter.
    pub fn parse(s: &str) -> Result<Self> {
        const ALL: [Layout; 6] = [
            Layout::BtrfsSubvolume,
            Layout::BtrfsNocow,
            Layout::Directory,
            Layout::PoolImage,
            Layout::HostImage,
            Layout::Overlay,
        ];
        ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layout {s:?} is not one of {}",
                ALL.map(Layout::as_str).join(", ")
            ))
        })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Filesystem inside a loop volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4, formatted with 4 KiB blocks.
    Ext4,
    /// xfs, formatted with 4 KiB sectors; at least 300 MiB.
    Xfs,
}

impl FsType {
    /// Parses an `fsType` parameter or a mount capability's fs_type.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => Err(Error::InvalidArgument(format!(
                "fsType {other:?} is not one of ext4, xfs"
            ))),
        }
    }

    /// The name `mount -t` and mkfs use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Smallest image this filesystem can be made on (mkfs.xfs refuses < 300 MB).
    pub fn min_bytes(self) -> u64 {
        match self {
            FsType::Ext4 => 16 << 20,
            FsType::Xfs => 300 << 20,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle state, persisted before each step so a crash can be explained on restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Allocation started; on restart a volume still in this state is rolled back.
    #[default]
    Creating,
    /// Usable.
    Ready,
    /// Deletion started; on restart it is finished.
    Deleting,
}

/// Where and how a volume is staged on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The staging path given by the CO.
    pub path: PathBuf,
    /// The loop device a loop volume is attached to (informational: the device is found
    /// again by its backing file, since numbers change across reboots).
    pub loop_device: Option<PathBuf>,
    /// Extra mount flags the CO asked for.
    #[serde(default)]
    pub mount_flags: Vec<String>,
    /// Staged as a raw block device (loop attached, nothing mounted).
    #[serde(default)]
    pub block: bool,
    /// The daemon created the staging directory (removed again at unstage).
    #[serde(default)]
    pub created_dir: bool,
}

/// One bind mount of a staged volume at a target path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// The target path given by the CO.
    pub target: PathBuf,
    /// Whether it was published read-only.
    pub read_only: bool,
    /// The loop device node bound onto a file, rather than a directory bind mount.
    #[serde(default)]
    pub block: bool,
    /// Published with SINGLE_NODE_SINGLE_WRITER: no second target may be added.
    #[serde(default)]
    pub single_writer: bool,
}

/// A volume mounted into a running container's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    /// A process in the container, as given at attach time.
    pub pid: i32,
    /// The path inside the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// Mounted with an id mapping into the container's user namespace.
    pub idmapped: bool,
    /// The inode of the process's mount namespace at attach time (None: attached by
    /// an older daemon).
    #[serde(default)]
    pub mnt_ns: Option<u64>,
    /// The boot the attachment was made in (pids and namespace inodes are reused
    /// across boots).
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// A node a volume is attached to by ControllerPublish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The node id.
    pub node_id: String,
    /// Attached read-only.
    pub read_only: bool,
}

/// What a volume was created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentSource {
    /// Restored from this snapshot id.
    Snapshot(String),
    /// Cloned from this volume id.
    Volume(String),
}

/// Everything Stowage knows about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Stable id, also the name of its directory in the pool.
    pub id: String,
    /// The CO's name for it (the idempotency key of CreateVolume).
    pub name: String,
    /// Storage kind.
    pub kind: VolumeKind,
    /// Filesystem of a loop volume.
    pub fs: Option<FsType>,
    /// Provisioned size in bytes.
    pub capacity: u64,
    /// Lifecycle state.
    pub state: VolumeState,
    /// Whether writes past `capacity` are refused (false for directories on a plain pool).
    pub capacity_enforced: bool,
    /// btrfs subvolume id of the volume's directory, when the pool is btrfs.
    pub subvolume_id: Option<u64>,
    /// The parameters it was created with (echoed as volume context).
    pub parameters: BTreeMap<String, String>,
    /// Seconds since the epoch at creation.
    pub created_at: u64,
    /// Staging on this node, if staged.
    pub staging: Option<StageRecord>,
    /// Publications on this node.
    pub publications: Vec<PublishRecord>,
    /// Bytes the filesystem of a loop volume spans; below `capacity` after an
    /// expansion the filesystem has not caught up with yet (0: equal to capacity).
    #[serde(default)]
    pub fs_size: u64,
    /// What the volume was created from.
    #[serde(default)]
    pub content_source: Option<ContentSource>,
    /// Nodes the volume is attached to (ControllerPublish).
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Current values of mutable parameters (ControllerModifyVolume).
    #[serde(default)]
    pub mutable_parameters: BTreeMap<String, String>,
    /// Created by NodePublish for an inline ephemeral volume; deleted at unpublish.
    #[serde(default)]
    pub ephemeral: bool,
    /// Mounts of this volume inside running containers (`vol attach`).
    #[serde(default)]
    pub container_mounts: Vec<ContainerMount>,
    /// Callers (container ids) that hold the volume mounted through the Docker/Podman
    /// volume plugin; it stays staged at its plugin mount point while any is left.
    #[serde(default)]
    pub plugin_callers: Vec<String>,
    /// Per peer, the newest replication snapshot it acknowledged (primary side).
    #[serde(default)]
    pub replicas: Vec<ReplicaAck>,
    /// How its data sits on the node; `None` in records written before layouts were
    /// recorded (see [`Layout::before_layouts`]).
    #[serde(default)]
    pub layout: Option<Layout>,
    /// The volume's generation: 1 when created, raised by every promotion of a
    /// replica. A node holding an older generation of the same volume is stale.
    #[serde(default)]
    pub generation: u64,
    /// Where and how often the volume is replicated (`replicas`,
    /// `replicationInterval`); `None` for a volume with one copy.
    #[serde(default)]
    pub replication: Option<ReplicationSpec>,
    /// The replication snapshots this primary holds, oldest first.
    #[serde(default)]
    pub replication_snapshots: Vec<ReplicationSnapshot>,
}

/// How a volume is replicated.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicationSpec {
    /// Copies wanted, the primary's included (`replicas` parameter).
    pub copies: u32,
    /// Seconds between replication snapshots (`replicationInterval`).
    pub interval_secs: u64,
    /// The nodes holding the other copies, chosen at creation.
    pub nodes: Vec<String>,
}

/// A replication snapshot the primary took.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicationSnapshot {
    /// Its name (`<seq>-g<generation>`).
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub taken_at: u64,
}

/// A peer's acknowledgement of a replication snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// The peer's node id.
    pub node_id: String,
    /// The snapshot it holds (sequence number).
    pub snapshot: String,
    /// Bytes of the stream that brought it.
    pub bytes_sent: u64,
    /// When it acknowledged, seconds since the epoch.
    pub acknowledged_at: u64,
}

impl VolumeRecord {
    /// True when staged or published somewhere on this node.
    pub fn in_use(&self) -> bool {
        self.staging.is_some() || !self.publications.is_empty() || !self.container_mounts.is_empty()
    }

    /// When replication snapshot `name` was taken (seconds since the epoch). The
    /// primary keeps every snapshot a replica acknowledged, so an acknowledgement's
    /// time is always found here.
    pub fn snapshot_taken_at(&self, name: &str) -> Option<u64> {
        self.replication_snapshots
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.taken_at)
    }

    /// Bytes the filesystem spans (see `fs_size`).
    pub fn filesystem_bytes(&self) -> u64 {
        if self.fs_size == 0 {
            self.capacity
        } else {
            self.fs_size
        }
    }
}

/// A point-in-time, read-only copy of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Stable id (`s-` + 32 hex digits), also its directory name in the pool.
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// The volume it was taken of (which may since have been deleted).
    pub source_volume_id: String,
    /// Kind of the source volume.
    pub kind: VolumeKind,
    /// Filesystem of a loop source.
    pub fs: Option<FsType>,
    /// Capacity of the source when taken: the smallest volume it restores into.
    pub size_bytes: u64,
    /// Bytes the source's filesystem spanned (loop volumes).
    #[serde(default)]
    pub fs_size: u64,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Nanoseconds part of the creation time.
    #[serde(default)]
    pub created_nanos: u32,
    /// Lifecycle state.
    pub state: VolumeState,
    /// The group snapshot it belongs to, if any.
    #[serde(default)]
    pub group_id: Option<String>,
}

/// A volume of another node replicated into this node's pool: the read-only
/// snapshots received for it, at `<pool>/replicas/<volume id>/<snapshot>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The volume's id on its primary (`v-` + 32 hex digits).
    pub id: String,
    /// The volume's name on its primary.
    pub name: String,
    /// Kind of the volume.
    pub kind: VolumeKind,
    /// Filesystem of a loop volume.
    pub fs: Option<FsType>,
    /// Capacity on the primary.
    pub capacity: u64,
    /// The node that sent the newest snapshot.
    pub source_node_id: String,
    /// Snapshots received, oldest first.
    pub snapshots: Vec<ReplicaSnapshot>,
    /// The primary's generation of the volume, as of the newest snapshot.
    #[serde(default)]
    pub generation: u64,
    /// The replication settings the primary sent (used when this copy is promoted).
    #[serde(default)]
    pub spec: Option<ReplicationSpec>,
    /// Set when this node was the volume's primary and found a newer generation
    /// elsewhere: what happened and the snapshot that keeps its divergent data.
    #[serde(default)]
    pub split_brain: Option<String>,
}

/// One snapshot a replica holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// Its name: the primary's sequence number for the volume's replication
    /// snapshots, in decimal.
    pub name: String,
    /// The snapshot the stream was relative to (incremental), if any.
    pub parent: Option<String>,
    /// Bytes of the stream.
    pub stream_bytes: u64,
    /// When it was applied, seconds since the epoch.
    pub received_at: u64,
    /// When the primary took it, seconds since the epoch.
    #[serde(default)]
    pub taken_at: u64,
}

/// Snapshots of several volumes taken at one point in time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupSnapshotRecord {
    /// Stable id (`g-` + 32 hex digits).
    pub id: String,
    /// The CO's name for it.
    pub name: String,
    /// Member snapshot ids, in the order of `source_volume_ids`.
    pub snapshot_ids: Vec<String>,
    /// The volumes, as requested.
    pub source_volume_ids: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Nanoseconds part of the creation time.
    pub created_nanos: u32,
    /// Lifecycle state.
    pub state: VolumeState,
}

/// Capacity of a pool, for GetCapacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Total bytes of the pool's filesystem.
    pub total: u64,
    /// Bytes a new volume could still use.
    pub available: u64,
}

/// Usage of a mounted volume, for NodeGetVolumeStats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeUsage {
    /// Capacity in bytes.
    pub total_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes still available.
    pub available_bytes: u64,
    /// Inodes in total (0 when the filesystem has no fixed count).
    pub total_inodes: u64,
    /// Inodes used.
    pub used_inodes: u64,
    /// Inodes free.
    pub available_inodes: u64,
}

/// Health of a volume as seen on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeHealth {
    /// True when something is wrong.
    pub abnormal: bool,
    /// What is wrong (or "ok").
    pub message: String,
}
