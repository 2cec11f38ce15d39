//! Pools: where volume data lives. The default is an embedded btrfs filesystem in a
//! sparse image under the state root (loop-attached and mounted by the daemon); an
//! existing btrfs mount or a plain directory on any filesystem can be named instead.
//!
//! Layout inside a pool root:
//! ```text
//! volumes/<id>/            one directory per volume (a subvolume on btrfs)
//! volumes/<id>/disk.img    the image file of a loop volume
//! snapshots/<id>/          one directory per snapshot (a read-only subvolume on btrfs)
//! ```
//! Beside an embedded pool, loop volumes of the `host-image` layout keep their image
//! on the host's own filesystem, so a write crosses one loop device rather than a
//! filesystem in a loop device in a filesystem in another loop device:
//! ```text
//! <images>/volumes/<id>/disk.img     preallocated image of a loop volume
//! <images>/snapshots/<id>/disk.img   its snapshots (reflinked where the host can)
//! ```
//! A volume's or snapshot's directory is found where it exists, so volumes made
//! before this layout (`pool-image`) stay where they are.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::model::{FsType, Layout, PoolUsage, VolumeKind, VolumeRecord};
use crate::os::Host;
use crate::os::btrfs::QgroupUsage;
use crate::os::mount::MountOptions;

/// Name of a loop volume's image file inside its directory.
pub const IMAGE_FILE: &str = "disk.img";
/// Name of the volumes directory inside a pool root.
pub const VOLUMES_DIR: &str = "volumes";
/// Name of the image layer store's subvolume inside a btrfs pool root.
pub const LAYER_STORE_DIR: &str = "layers-store";
/// How long a create or expansion short of space waits for btrfs's cleaner.
pub const CLEANER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Name of the snapshots directory inside a pool root.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Which pool to use, as the daemon's flags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolConfig {
    /// btrfs in a sparse image file, created on first start with `size` bytes.
    Embedded {
        /// The image file.
        image: PathBuf,
        /// Where the daemon mounts it.
        mount: PathBuf,
        /// Size of the image when it is first created.
        size: u64,
        /// The directory on the host's filesystem for `host-image` loop volumes.
        images: PathBuf,
        /// Where new loop volumes' images go: [`Layout::HostImage`] (one loop
        /// device over a file of the host's filesystem) or [`Layout::PoolImage`].
        loop_layout: Layout,
    },
    /// A block device (a disk or partition of its own) holding btrfs, mounted by the
    /// daemon at `mount`: the production setup, with no loop device under the pool.
    Device {
        /// The device node, formatted btrfs by the administrator (never by us).
        device: PathBuf,
        /// Where the daemon mounts it.
        mount: PathBuf,
    },
    /// An existing btrfs mount (or a directory inside one).
    Btrfs {
        /// The directory to keep volumes under.
        path: PathBuf,
    },
    /// A directory on any filesystem: directory volumes cannot enforce their size.
    Dir {
        /// The directory to keep volumes under.
        path: PathBuf,
    },
}

/// What the pool's filesystem can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolBackend {
    /// btrfs: subvolumes, qgroup limits, reflinks.
    Btrfs {
        /// The filesystem UUID (for qgroup usage in sysfs).
        fs_uuid: String,
    },
    /// Any other filesystem.
    Plain,
}

/// An open pool.
#[derive(Debug, Clone)]
pub struct Pool {
    root: PathBuf,
    backend: PoolBackend,
    host: Host,
    /// The daemon mounts it (the embedded image, a device): it must be a btrfs mount
    /// point.
    mounted_by_daemon: bool,
    /// The device of `volumes/` when opened (a plain pool's filesystem).
    root_dev: u64,
    /// Whether it was usable when last looked at (to log changes once).
    healthy: Arc<AtomicBool>,
    /// The host-image directory beside an embedded pool.
    images: Option<PathBuf>,
    /// The layout of new loop volumes that are not replicated.
    loop_layout: Layout,
    /// Whether the host-image directory's filesystem makes reflinks (an atomic copy).
    host_reflinks: bool,
}

impl Pool {
    /// Opens the pool `config` describes, creating and mounting the embedded image
    /// when needed (an already mounted one, e.g. after a daemon restart, is reused).
    pub fn open(config: &PoolConfig, host: Host) -> Result<Self> {
        let (root, want_btrfs) = match config {
            PoolConfig::Embedded {
                image, mount, size, ..
            } => {
                open_embedded(&host, image, mount, *size)?;
                (mount.clone(), true)
            }
            PoolConfig::Device { device, mount } => {
                open_device(&host, device, mount)?;
                (mount.clone(), true)
            }
            PoolConfig::Btrfs { path } => (path.clone(), true),
            PoolConfig::Dir { path } => (path.clone(), false),
        };
        for sub in [VOLUMES_DIR, SNAPSHOTS_DIR] {
            std::fs::create_dir_all(root.join(sub))
                .ctx(|| format!("create {}", root.join(sub).display()))?;
        }
        restrict_to_root(&root)?;
        let (images, loop_layout) = match config {
            PoolConfig::Embedded {
                images,
                loop_layout,
                ..
            } => {
                for sub in [VOLUMES_DIR, SNAPSHOTS_DIR] {
                    std::fs::create_dir_all(images.join(sub))
                        .ctx(|| format!("create {}", images.join(sub).display()))?;
                }
                restrict_to_root(images)?;
                (Some(images.clone()), *loop_layout)
            }
            _ => (None, Layout::PoolImage),
        };
        let host_reflinks = images
            .as_deref()
            .is_some_and(|i| host.copier.makes_reflinks(i));
        let is_btrfs = host
            .btrfs
            .is_btrfs(&root)
            .ctx(|| format!("statfs {}", root.display()))?;
        let backend = match (want_btrfs, is_btrfs) {
            (true, false) => {
                return Err(Error::InvalidArgument(format!(
                    "pool {} is not on btrfs",
                    root.display()
                )));
            }
            (true, true) => {
                host.btrfs.enable_quota(&root)?;
                PoolBackend::Btrfs {
                    fs_uuid: host.btrfs.fs_uuid(&root)?,
                }
            }
            (false, _) => PoolBackend::Plain,
        };
        let volumes = root.join(VOLUMES_DIR);
        let root_dev = std::fs::metadata(&volumes)
            .ctx(|| format!("stat {}", volumes.display()))?
            .dev();
        Ok(Pool {
            root,
            backend,
            host,
            mounted_by_daemon: matches!(
                config,
                PoolConfig::Embedded { .. } | PoolConfig::Device { .. }
            ),
            root_dev,
            healthy: Arc::new(AtomicBool::new(true)),
            images,
            loop_layout,
            host_reflinks,
        })
    }

    /// On btrfs, the subvolume `<root>/layers-store` for the image layer store (made
    /// if missing) with a qgroup limit of `limit` bytes (0: a quarter of the pool),
    /// so that layer imports count against a quota of the pool rather than against
    /// the host's root filesystem; None on a plain pool.
    pub fn layer_store_dir(&self, limit: u64) -> Result<Option<PathBuf>> {
        if !matches!(self.backend, PoolBackend::Btrfs { .. }) {
            return Ok(None);
        }
        let dir = self.root.join(LAYER_STORE_DIR);
        match std::fs::symlink_metadata(&dir) {
            Err(_) => {
                self.host.btrfs.create_subvolume(&dir)?;
            }
            // A qgroup limit on a plain directory would limit the subvolume holding it.
            Ok(_) if !self.host.btrfs.is_subvolume(&dir).unwrap_or(false) => {
                return Err(Error::FailedPrecondition(format!(
                    "{} exists and is not a btrfs subvolume; move it away",
                    dir.display()
                )));
            }
            Ok(_) => {}
        }
        let limit = if limit == 0 {
            self.usage()?.total / 4
        } else {
            limit
        };
        self.host.btrfs.set_limit(&dir, limit)?;
        Ok(Some(dir))
    }

    /// Why the pool cannot be used now, if it cannot: its root is gone, is no longer
    /// on the filesystem it was opened on (its mount went away), or is read-only. A
    /// change either way is logged once.
    pub fn problem(&self) -> Option<String> {
        let problem = self.find_problem();
        let was_healthy = self.healthy.swap(problem.is_none(), Ordering::Relaxed);
        match (&problem, was_healthy) {
            (Some(p), true) => {
                tracing::error!(pool = %self.root.display(), problem = %p, "pool lost")
            }
            (None, false) => tracing::warn!(pool = %self.root.display(), "pool is back"),
            _ => {}
        }
        problem
    }

    fn find_problem(&self) -> Option<String> {
        let root = self.root.display();
        let meta = match std::fs::metadata(self.root.join(VOLUMES_DIR)) {
            Ok(m) => m,
            Err(e) => return Some(format!("pool {root} cannot be reached: {e}")),
        };
        match &self.backend {
            PoolBackend::Btrfs { .. } => {
                if !self.host.btrfs.is_btrfs(&self.root).unwrap_or(false) {
                    return Some(format!("pool {root} is no longer on btrfs (unmounted?)"));
                }
                if self.mounted_by_daemon {
                    match self.host.mounter.mount_at(&self.root) {
                        Ok(Some(m)) if m.fs_type == "btrfs" => {}
                        _ => return Some(format!("pool {root} is not mounted")),
                    }
                }
            }
            PoolBackend::Plain => {
                if meta.dev() != self.root_dev {
                    return Some(format!(
                        "pool {root} is no longer on the filesystem it was opened on (unmounted?)"
                    ));
                }
            }
        }
        match nix::sys::statvfs::statvfs(&self.root) {
            Ok(st) if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) => {
                Some(format!("pool {root} is read-only"))
            }
            Ok(_) => None,
            Err(e) => Some(format!("pool {root} cannot be examined: {e}")),
        }
    }

    /// The pool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pool's back end.
    pub fn backend(&self) -> &PoolBackend {
        &self.backend
    }

    /// True when directory volumes get an enforced size limit.
    pub fn enforces_dir_capacity(&self) -> bool {
        matches!(self.backend, PoolBackend::Btrfs { .. })
    }

    /// The directory of volume `id` (which must be a validated id): in the host-image
    /// directory when it is there, in the pool otherwise.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        debug_assert!(crate::ids::is_valid_id(id));
        self.existing_entry(VOLUMES_DIR, id)
    }

    /// `<images>/<sub>/<id>` when it exists, else `<root>/<sub>/<id>`.
    fn existing_entry(&self, sub: &str, id: &str) -> PathBuf {
        if let Some(images) = &self.images {
            let p = images.join(sub).join(id);
            if std::fs::symlink_metadata(&p).is_ok() {
                return p;
            }
        }
        self.root.join(sub).join(id)
    }

    /// The directories that hold volume and snapshot entries: the pool's and, beside
    /// an embedded pool, the host-image directory's.
    pub fn entry_dirs(&self, sub: &str) -> Vec<PathBuf> {
        std::iter::once(self.root.join(sub))
            .chain(self.images.iter().map(|i| i.join(sub)))
            .collect()
    }

    /// The host-image directory, beside an embedded pool.
    pub fn host_images(&self) -> Option<&Path> {
        self.images.as_deref()
    }

    /// Whether host images are copied by reflink (atomically) on this node.
    pub fn host_reflinks(&self) -> bool {
        self.host_reflinks
    }

    /// The host filesystem as host images may use it: its size, and the bytes free to
    /// root less [`HOST_RESERVE`] (None without a host-image directory). The sparse
    /// pool image is thin on that filesystem, as it always was: host images do not
    /// reserve its growth (ARCHITECTURE.md, "Capacity policy").
    pub fn host_usage(&self) -> Result<Option<PoolUsage>> {
        let Some(images) = &self.images else {
            return Ok(None);
        };
        let st = nix::sys::statvfs::statvfs(images)
            .map_err(|e| Error::io(format!("statfs {}", images.display()), e.into()))?;
        let frsize = st.fragment_size() as u64;
        Ok(Some(PoolUsage {
            total: st.blocks() as u64 * frsize,
            available: (st.blocks_available() as u64 * frsize).saturating_sub(HOST_RESERVE),
        }))
    }

    /// The image file of loop volume `id`.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.volume_dir(id).join(IMAGE_FILE)
    }

    /// The directory (a read-only subvolume on btrfs) of snapshot `id`: in the
    /// host-image directory when it is there, in the pool otherwise.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.existing_entry(SNAPSHOTS_DIR, id)
    }

    /// Total and available bytes of the pool's filesystem.
    pub fn usage(&self) -> Result<PoolUsage> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| Error::io(format!("statvfs {}", self.root.display()), e.into()))?;
        let frsize = st.fragment_size() as u64;
        Ok(PoolUsage {
            total: st.blocks() as u64 * frsize,
            available: st.blocks_available() as u64 * frsize,
        })
    }
}

/// Bytes of the host's filesystem a `host-image` volume must leave free.
pub const HOST_RESERVE: u64 = 1 << 30;

mod layout;
mod opening;
mod storage;

use opening::{open_device, open_embedded, restrict_to_root};

#[cfg(test)]
mod tests;
