//! The OS boundary: one trait per kind of side effect on the host, each with a real
//! implementation (root needed) and a recording fake in `fake` for unit tests (built
//! for this crate's tests and, with the `fake` feature, for other crates' tests; never
//! in a release build).

pub mod btrfs;
pub mod command;
pub mod copy;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod loopdev;
pub mod mkfs;
pub mod mount;
pub mod mountpoint;
pub mod nsmount;
pub mod sendstream;

use std::sync::Arc;

pub use btrfs::{Btrfs, RealBtrfs};
pub use copy::{RealTreeCopy, TreeCopy};
pub use loopdev::{FileId, LoopControl, LoopInfo, RealLoopControl};
pub use mkfs::{Formatter, RealFormatter};
pub use mount::{Expected, Found, MountEntry, MountOptions, Mounter, RealMounter};
pub use mountpoint::MountPoint;
pub use nsmount::{Namespaces, NsRequest, RealNamespaces};

/// The host's side effects, bundled so the manager and pool take one value.
#[derive(Debug, Clone)]
pub struct Host {
    /// Mounting and unmounting.
    pub mounter: Arc<dyn Mounter>,
    /// Loop device attach and detach.
    pub loops: Arc<dyn LoopControl>,
    /// mkfs.
    pub formatter: Arc<dyn Formatter>,
    /// btrfs subvolumes, qgroups and inode flags.
    pub btrfs: Arc<dyn Btrfs>,
    /// Tree copies (snapshots on plain pools).
    pub copier: Arc<dyn TreeCopy>,
    /// Mounts into other processes' mount namespaces.
    pub namespaces: Arc<dyn Namespaces>,
}

impl Host {
    /// The real host, reading mount and loop state from the usual /proc and /sys paths;
    /// `helper` is the executable that runs [`nsmount::helper_main`] (the daemon).
    pub fn real(helper: impl Into<std::path::PathBuf>) -> Self {
        Host {
            mounter: Arc::new(RealMounter::new("/proc/self/mountinfo")),
            loops: Arc::new(RealLoopControl::new("/dev", "/sys")),
            formatter: Arc::new(RealFormatter),
            btrfs: Arc::new(RealBtrfs::new("/sys")),
            copier: Arc::new(RealTreeCopy),
            namespaces: Arc::new(RealNamespaces::new(helper)),
        }
    }
}
