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

    /// Bytes available for `wanted` more of a volume of `layout`: on the host for a
    /// host image, else as [`Self::available_for`]. NO_SPACE if they are not there.
    pub fn available_for_layout(&self, layout: Layout, wanted: u64, what: &str) -> Result<u64> {
        if layout != Layout::HostImage {
            return self.available_for(wanted, what);
        }
        let available = self.host_usage()?.map(|u| u.available).unwrap_or(0);
        if wanted > available {
            return Err(Error::NoSpace(format!(
                "{what}: {wanted} bytes, {available} available on the host filesystem \
                 (keeping {HOST_RESERVE} bytes free)"
            )));
        }
        Ok(available)
    }

    /// The layout of volume `rec` (recorded, or what the release that made it used).
    pub fn layout_of(&self, rec: &VolumeRecord) -> Layout {
        rec.layout.unwrap_or_else(|| {
            Layout::before_layouts(rec.kind, matches!(self.backend, PoolBackend::Btrfs { .. }))
        })
    }

    /// The layout a new volume gets: `asked` when the pool offers it (INVALID_ARGUMENT
    /// if not), else [`Self::layout_for_new`]'s choice.
    pub fn choose_layout(
        &self,
        kind: VolumeKind,
        asked: Option<Layout>,
        replicated: bool,
        compression: bool,
    ) -> Result<Layout> {
        let btrfs = matches!(self.backend, PoolBackend::Btrfs { .. });
        let Some(l) = asked else {
            return Ok(self.layout_for_new(kind, replicated, compression));
        };
        let offered = match l {
            Layout::BtrfsNocow => btrfs && !compression,
            Layout::BtrfsSubvolume => btrfs,
            Layout::Directory => !btrfs,
            Layout::HostImage => self.images.is_some(),
            Layout::PoolImage | Layout::Overlay => true,
        };
        if !offered {
            return Err(Error::InvalidArgument(format!(
                "layout {l} is not offered by this node's pool{}",
                if compression { " with compression" } else { "" }
            )));
        }
        Ok(l)
    }

    /// The layout a new volume of `kind` gets: a loop volume's image on the host's
    /// filesystem beside an embedded pool unless it is `replicated` (btrfs send ships
    /// pool images); a directory nodatacow on btrfs unless it wants `compression`.
    fn layout_for_new(&self, kind: VolumeKind, replicated: bool, compression: bool) -> Layout {
        let btrfs = matches!(self.backend, PoolBackend::Btrfs { .. });
        match kind {
            VolumeKind::Loop if self.images.is_some() && !replicated => self.loop_layout,
            VolumeKind::Loop => Layout::PoolImage,
            VolumeKind::Dir if !btrfs => Layout::Directory,
            VolumeKind::Dir if compression => Layout::BtrfsSubvolume,
            VolumeKind::Dir => Layout::BtrfsNocow,
            VolumeKind::Image => Layout::Overlay,
        }
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

    /// Makes the storage for `rec` — empty (a directory, or a freshly formatted image)
    /// or as a writable copy of `origin` (a snapshot's or another volume's directory) —
    /// and fills in `subvolume_id`, `capacity_enforced` and `fs_size`. On failure
    /// nothing is left behind.
    pub fn allocate(&self, rec: &mut VolumeRecord, origin: Option<&Path>) -> Result<()> {
        if self.layout_of(rec) == Layout::HostImage {
            // Not in the pool: btrfs's cleaner gives nothing back to the host.
            return self.allocate_once(rec, origin);
        }
        let waited = self.usage()?.available < rec.capacity && self.wait_for_cleaner();
        match self.allocate_once(rec, origin) {
            // Space of deleted subvolumes comes back only when btrfs's cleaner has
            // been through them: wait for it (once, bounded), then try once more.
            Err(e) if e.is_no_space() && !waited && self.wait_for_cleaner() => {
                tracing::info!(volume.id = %rec.id, error = %e, "out of space before btrfs's cleaner ran; trying again");
                self.allocate_once(rec, origin)
            }
            other => other,
        }
    }

    /// [`Pool::allocate`] without waiting for btrfs's cleaner (while a clone's source
    /// is frozen); the caller waits first, with [`Pool::available_for`].
    pub fn allocate_without_waiting(
        &self,
        rec: &mut VolumeRecord,
        origin: Option<&Path>,
    ) -> Result<()> {
        self.allocate_once(rec, origin)
    }

    /// Bytes available for `wanted` more: when the pool seems to lack them, first
    /// waits (once, bounded) for btrfs's cleaner to give back the space of deleted
    /// subvolumes. NO_SPACE if they are still not there.
    pub fn available_for(&self, wanted: u64, what: &str) -> Result<u64> {
        let mut available = self.usage()?.available;
        if wanted > available && self.wait_for_cleaner() {
            available = self.usage()?.available;
        }
        if wanted > available {
            return Err(Error::NoSpace(format!(
                "{what}: {wanted} bytes, {available} available"
            )));
        }
        Ok(available)
    }

    /// On btrfs, waits up to [`CLEANER_WAIT`] for deleted subvolumes to be cleaned
    /// and says it did; false where there is nothing to wait for (not btrfs). A wait
    /// that fails is logged: the caller's own outcome (NO_SPACE) is what it reports.
    fn wait_for_cleaner(&self) -> bool {
        if !matches!(self.backend, PoolBackend::Btrfs { .. }) {
            return false;
        }
        match self.host.btrfs.wait_for_cleaner(&self.root, CLEANER_WAIT) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(pool = %self.root.display(), "btrfs's cleaner did not finish in time")
            }
            Err(e) => {
                tracing::warn!(pool = %self.root.display(), error = %e, "waiting for btrfs's cleaner")
            }
        }
        true
    }

    fn allocate_once(&self, rec: &mut VolumeRecord, origin: Option<&Path>) -> Result<()> {
        if self.layout_of(rec) == Layout::HostImage {
            return self.allocate_host_image(rec, origin);
        }
        let available = self.usage()?.available;
        if rec.capacity > available {
            return Err(Error::NoSpace(format!(
                "requested: {} bytes, {available} available",
                rec.capacity
            )));
        }
        let dir = self.volume_dir(&rec.id);
        rec.subvolume_id = match (&self.backend, origin) {
            (PoolBackend::Btrfs { .. }, None) => Some(self.host.btrfs.create_subvolume(&dir)?),
            // A loop volume from a host image: a fresh subvolume, the image copied in.
            (PoolBackend::Btrfs { .. }, Some(src))
                if rec.kind == VolumeKind::Loop
                    && !self.host.btrfs.is_subvolume(src).unwrap_or(false) =>
            {
                Some(self.host.btrfs.create_subvolume(&dir)?)
            }
            (PoolBackend::Btrfs { .. }, Some(src)) => {
                Some(self.host.btrfs.snapshot(src, &dir, false)?)
            }
            (PoolBackend::Plain, None) => {
                std::fs::create_dir(&dir).ctx(|| format!("create {}", dir.display()))?;
                None
            }
            (PoolBackend::Plain, Some(src)) => {
                if let Err(e) = self.host.copier.copy_tree(src, &dir) {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                None
            }
        };
        let result = match (rec.kind, origin) {
            (VolumeKind::Dir | VolumeKind::Image, _) => {
                self.make_dir_volume(rec, &dir, origin.is_none())
            }
            (VolumeKind::Loop, None) => {
                let fs = rec.fs.unwrap_or(FsType::Ext4);
                rec.capacity_enforced = true;
                rec.fs_size = rec.capacity;
                self.make_image(&dir.join(IMAGE_FILE), rec.capacity, fs)
            }
            (VolumeKind::Loop, Some(src)) => {
                // The copied filesystem keeps its size (`fs_size`, set by the caller);
                // a larger image is grown now and the filesystem at its next stage.
                rec.capacity_enforced = true;
                self.copy_image_if_missing(src, &dir)
                    .and_then(|()| self.grow_image(&rec.id, rec.capacity))
            }
        };
        if let Err(e) = result {
            if let Err(cleanup) = self.remove_dir(&dir) {
                tracing::warn!(volume.id = %rec.id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Makes a `host-image` loop volume: a preallocated image on the host's
    /// filesystem, formatted, or a copy of `origin`'s image (reflinked where the host
    /// filesystem can, sparse otherwise) then preallocated to the volume's size.
    /// Preallocated so that a volume never finds the host full under its filesystem
    /// (an I/O error inside it) and writes do not allocate on the host. On failure
    /// nothing is left behind.
    fn allocate_host_image(&self, rec: &mut VolumeRecord, origin: Option<&Path>) -> Result<()> {
        let Some(images) = &self.images else {
            return Err(Error::FailedPrecondition(
                "host-image volumes need an embedded pool's image directory".into(),
            ));
        };
        self.available_for_layout(Layout::HostImage, rec.capacity, "requested")?;
        let dir = images.join(VOLUMES_DIR).join(&rec.id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .ctx(|| format!("create {}", dir.display()))?;
        rec.capacity_enforced = true;
        let result = match origin {
            None => {
                rec.fs_size = rec.capacity;
                self.make_image(
                    &dir.join(IMAGE_FILE),
                    rec.capacity,
                    rec.fs.unwrap_or(FsType::Ext4),
                )
            }
            Some(src) => self
                .copy_image_if_missing(src, &dir)
                .and_then(|()| self.grow_image(&rec.id, rec.capacity)),
        };
        if let Err(e) = result {
            if let Err(cleanup) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(volume.id = %rec.id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Copies `src`'s image into `dir` unless a snapshot of the subvolume already
    /// brought it: reflinked where both sides share a filesystem that can, holes kept.
    /// In a btrfs directory marked nodatacow first, so the copy is nodatacow too.
    fn copy_image_if_missing(&self, src: &Path, dir: &Path) -> Result<()> {
        let image = dir.join(IMAGE_FILE);
        if std::fs::symlink_metadata(&image).is_ok() {
            return Ok(());
        }
        self.nocow_dir(dir)?;
        self.host.copier.copy_tree(&src.join(IMAGE_FILE), &image)?;
        crate::mode::set_mode(&image, 0o600)
    }

    /// Marks directory `dir` nodatacow so the image copied into it is too (and a
    /// reflink from a nodatacow image is allowed): required in a btrfs pool, where
    /// the host has the flag for a host-image directory.
    fn nocow_dir(&self, dir: &Path) -> Result<()> {
        let d = std::fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
        self.mark_nocow(&d, dir)
    }

    /// Marks `file` (at `path`; an empty file, or a directory for what is made in it)
    /// nodatacow: required in a btrfs pool, where the host has the flag for a host
    /// image (only a btrfs host does), nothing elsewhere.
    fn mark_nocow(&self, file: &std::fs::File, path: &Path) -> Result<()> {
        if self.is_host_image_entry(path) {
            if let Err(e) = self.host.btrfs.set_nocow(file) {
                tracing::debug!(path = %path.display(), error = %e, "host filesystem has no nodatacow");
            }
        } else if matches!(self.backend, PoolBackend::Btrfs { .. }) {
            self.host
                .btrfs
                .set_nocow(file)
                .ctx(|| format!("set nodatacow on {}", path.display()))?;
        }
        Ok(())
    }

    /// Allocates host image `image`'s blocks up to `size` bytes; on failure (a
    /// fallocate may extend the file part of the way) its length goes back to `len`.
    fn preallocate_image(
        &self,
        file: &std::fs::File,
        image: &Path,
        len: u64,
        size: u64,
    ) -> Result<()> {
        preallocate(file, size).map_err(|e| {
            if let Err(undo) = file.set_len(len) {
                tracing::warn!(image = %image.display(), error = %undo, "restore image length");
            }
            match e {
                nix::errno::Errno::ENOSPC => Error::NoSpace(format!(
                    "{size} bytes for {} do not fit on the host filesystem",
                    image.display()
                )),
                e => Error::io(format!("preallocate {}", image.display()), e.into()),
            }
        })
    }

    /// True when `path` is in the host-image directory.
    fn is_host_image_entry(&self, path: &Path) -> bool {
        self.images.as_ref().is_some_and(|i| path.starts_with(i))
    }

    /// Grows a loop volume's image file to `size` bytes (never shrinks it); a host
    /// image is preallocated to its whole size.
    pub fn grow_image(&self, id: &str, size: u64) -> Result<()> {
        let image = self.image_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&image)
            .ctx(|| format!("open {}", image.display()))?;
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", image.display()))?
            .len();
        if self.is_host_image_entry(&image) {
            return self.preallocate_image(&file, &image, len, size);
        }
        if size > len {
            file.set_len(size)
                .ctx(|| format!("grow {}", image.display()))?;
        }
        Ok(())
    }

    /// Sets a directory volume's size limit (a no-op on plain pools, which cannot).
    pub fn set_dir_limit(&self, id: &str, bytes: u64) -> Result<()> {
        match self.backend {
            PoolBackend::Btrfs { .. } => self.host.btrfs.set_limit(&self.volume_dir(id), bytes),
            PoolBackend::Plain => Ok(()),
        }
    }

    /// Sets the compression of a directory volume's whole tree.
    pub fn set_compression(&self, id: &str, algorithm: &str) -> Result<()> {
        self.host
            .btrfs
            .set_compression(&self.volume_dir(id), algorithm)
    }

    /// Makes snapshot `snapshot_id` of volume `volume_id`: a read-only btrfs snapshot,
    /// or a sparse-aware copy on plain pools. On failure nothing is left behind.
    pub fn take_snapshot(&self, volume_id: &str, snapshot_id: &str) -> Result<()> {
        let src = self.volume_dir(volume_id);
        let (dest, result) = match (&self.images, &self.backend) {
            // A host image's snapshot is a copy beside it (a reflink where the host can).
            (Some(images), _) if src.starts_with(images) => {
                let dest = images.join(SNAPSHOTS_DIR).join(snapshot_id);
                let result = std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dest)
                    .ctx(|| format!("create {}", dest.display()))
                    .and_then(|()| self.copy_image_if_missing(&src, &dest));
                (dest, result)
            }
            (_, PoolBackend::Btrfs { .. }) => {
                let dest = self.root.join(SNAPSHOTS_DIR).join(snapshot_id);
                let result = self.host.btrfs.snapshot(&src, &dest, true).map(|_| ());
                (dest, result)
            }
            (_, PoolBackend::Plain) => {
                let dest = self.root.join(SNAPSHOTS_DIR).join(snapshot_id);
                let result = self.host.copier.copy_tree(&src, &dest);
                (dest, result)
            }
        };
        if result.is_err() {
            let _ = self.remove_dir(&dest);
        }
        result
    }

    /// Removes snapshot `id`'s storage; succeeds when it is already gone.
    pub fn release_snapshot(&self, id: &str) -> Result<()> {
        self.remove_dir(&self.snapshot_dir(id))
    }

    fn make_dir_volume(&self, rec: &mut VolumeRecord, dir: &Path, fresh: bool) -> Result<()> {
        match self.backend {
            PoolBackend::Btrfs { .. } => {
                if rec.kind == VolumeKind::Dir {
                    let d = std::fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
                    // Fresh: before any file exists, so every file is nodatacow. A clone
                    // asked for a layout changes what its new files get; one that was
                    // not keeps its origin's (`layout` None).
                    match rec.layout {
                        Some(Layout::BtrfsNocow) => self.host.btrfs.set_nocow(&d),
                        Some(Layout::BtrfsSubvolume) if !fresh => self.host.btrfs.clear_nocow(&d),
                        _ => Ok(()),
                    }
                    .ctx(|| format!("set the nodatacow flag of {}", dir.display()))?;
                    // A copy keeps its origin's flag: say what new files get.
                    let nocow = self
                        .host
                        .btrfs
                        .is_nocow(&d)
                        .ctx(|| format!("read flags of {}", dir.display()))?;
                    rec.layout = Some(if nocow {
                        Layout::BtrfsNocow
                    } else {
                        Layout::BtrfsSubvolume
                    });
                }
                self.host.btrfs.set_limit(dir, rec.capacity)?;
                rec.capacity_enforced = true;
            }
            PoolBackend::Plain => rec.capacity_enforced = false,
        }
        Ok(())
    }

    fn make_image(&self, image: &Path, size: u64, fs: FsType) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(image)
            .ctx(|| format!("create {}", image.display()))?;
        // Must happen while the file is empty; reflinks still work between nocow files.
        self.mark_nocow(&file, image)?;
        if self.is_host_image_entry(image) {
            self.preallocate_image(&file, image, 0, size)?;
        } else {
            file.set_len(size)
                .ctx(|| format!("size {}", image.display()))?;
        }
        drop(file);
        self.host.formatter.format(image, fs)
    }

    /// Removes the storage of volume `id`; succeeds when it is already gone.
    pub fn release(&self, id: &str) -> Result<()> {
        // A loop device left attached (crash mid-unstage) would keep the image busy.
        self.detach_loops(id)?;
        self.remove_dir(&self.volume_dir(id))
    }

    /// Detaches every loop device backed by volume `id`'s image.
    pub fn detach_loops(&self, id: &str) -> Result<()> {
        for l in self
            .host
            .loops
            .find(&self.image_path(id))
            .ctx(|| "list loop devices".into())?
        {
            self.host
                .loops
                .detach(&l.device)
                .ctx(|| format!("detach {}", l.device.display()))?;
        }
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        if self.is_host_image_entry(dir) {
            return std::fs::remove_dir_all(dir).ctx(|| format!("remove {}", dir.display()));
        }
        match self.backend {
            PoolBackend::Btrfs { .. } => self.host.btrfs.delete_subvolume(dir),
            PoolBackend::Plain => {
                std::fs::remove_dir_all(dir).ctx(|| format!("remove {}", dir.display()))
            }
        }
    }

    /// Qgroup usage of a directory volume on a btrfs pool.
    pub fn qgroup_usage(&self, rec: &VolumeRecord) -> Result<Option<QgroupUsage>> {
        match (&self.backend, rec.subvolume_id) {
            (PoolBackend::Btrfs { fs_uuid }, Some(id)) => self.host.btrfs.qgroup_usage(fs_uuid, id),
            _ => Ok(None),
        }
    }

    /// Entries of the volumes and snapshots directories that no record explains.
    pub fn orphans(&self, known: &HashSet<String>) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for dir in [VOLUMES_DIR, SNAPSHOTS_DIR]
            .into_iter()
            .flat_map(|sub| self.entry_dirs(sub))
        {
            for entry in std::fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
                let entry = entry.ctx(|| format!("read {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    out.push(entry.path());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Bytes of the host's filesystem a `host-image` volume must leave free.
pub const HOST_RESERVE: u64 = 1 << 30;

/// Allocates `file`'s blocks up to `size` bytes (its length becomes at least `size`).
fn preallocate(file: &std::fs::File, size: u64) -> nix::Result<()> {
    let len = i64::try_from(size).map_err(|_| nix::errno::Errno::EFBIG)?;
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
}

/// Makes a pool readable by root alone: the root (and so everything below it, which
/// containers reach through bind mounts, never through this path) 0700 and every loop
/// image 0600, also those made before this rule.
fn restrict_to_root(root: &Path) -> Result<()> {
    crate::mode::set_mode(root, 0o700)?;
    let volumes = root.join(VOLUMES_DIR);
    crate::mode::set_mode(&volumes, 0o700)?;
    crate::mode::set_mode(&root.join(SNAPSHOTS_DIR), 0o700)?;
    for entry in std::fs::read_dir(&volumes).ctx(|| format!("read {}", volumes.display()))? {
        let entry = entry.ctx(|| format!("read {}", volumes.display()))?;
        let image = entry.path().join(IMAGE_FILE);
        if std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file()) {
            crate::mode::set_mode(&image, 0o600)?;
        }
    }
    Ok(())
}

/// Whether a btrfs is mounted at `mount` (the pool, after a daemon restart).
fn btrfs_mounted_at(host: &Host, mount: &Path) -> Result<bool> {
    let mounts = host.mounter.mounts().ctx(|| "read mount table".into())?;
    Ok(mounts
        .iter()
        .any(|m| m.mount_point == mount && m.fs_type == "btrfs"))
}

/// Mounts the btrfs on block device `device` at `mount` (reusing a mount already there).
fn open_device(host: &Host, device: &Path, mount: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device).ctx(|| format!("stat {}", device.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::InvalidArgument(format!(
            "pool device {} is not a block device",
            device.display()
        )));
    }
    std::fs::create_dir_all(mount).ctx(|| format!("create {}", mount.display()))?;
    if btrfs_mounted_at(host, mount)? {
        tracing::info!(pool = %mount.display(), "pool device already mounted");
        return Ok(());
    }
    let mut opts = MountOptions::volume_defaults();
    opts.extra.push("noatime".into());
    let target = crate::os::MountPoint::own(mount).ctx(|| format!("open {}", mount.display()))?;
    host.mounter
        .mount(device, &target, "btrfs", &opts)
        .map_err(|e| {
            Error::FailedPrecondition(format!(
                "mount pool device {} at {}: {e} (it must hold a btrfs filesystem: \
                 mkfs.btrfs {})",
                device.display(),
                mount.display(),
                device.display()
            ))
        })?;
    tracing::info!(pool = %mount.display(), device = %device.display(), "mounted pool device");
    Ok(())
}

fn open_embedded(host: &Host, image: &Path, mount: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(mount).ctx(|| format!("create {}", mount.display()))?;
    if image.exists() {
        // Images made before pools were root-only.
        crate::mode::set_mode(image, 0o600)?;
    }
    if btrfs_mounted_at(host, mount)? {
        tracing::info!(pool = %mount.display(), "embedded pool already mounted");
        return Ok(());
    }
    if !image.exists() {
        // Build under a temporary name so an interrupted first start leaves no
        // half-made pool that a later start would trust.
        let tmp = image.with_extension("img.new");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        file.set_len(size)
            .ctx(|| format!("size {}", tmp.display()))?;
        drop(file);
        host.formatter.format_btrfs(&tmp, "stowage-pool")?;
        std::fs::rename(&tmp, image).ctx(|| format!("rename {}", tmp.display()))?;
        tracing::info!(image = %image.display(), size, "created embedded btrfs pool");
    }
    let existing = host.loops.find(image).ctx(|| "list loop devices".into())?;
    let (device, attached_here) = match existing.into_iter().next() {
        Some(l) => (l.device, false),
        None => {
            let l = host
                .loops
                .attach(image, true, false)
                .ctx(|| format!("attach {}", image.display()))?;
            (l.device, true)
        }
    };
    let mut opts = MountOptions::volume_defaults();
    opts.extra.push("noatime".into());
    let target = crate::os::MountPoint::own(mount).ctx(|| format!("open {}", mount.display()))?;
    if let Err(e) = host.mounter.mount(&device, &target, "btrfs", &opts) {
        if attached_here {
            let _ = host.loops.detach(&device);
        }
        return Err(Error::io(format!("mount pool {}", mount.display()), e));
    }
    tracing::info!(pool = %mount.display(), device = %device.display(), "mounted embedded pool");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::fake::FakeHost;

    #[test]
    fn embedded_pool_is_created_attached_mounted_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(true);
        let config = PoolConfig::Embedded {
            image: dir.path().join("pool.img"),
            mount: dir.path().join("pool"),
            size: 1 << 30,
            images: dir.path().join("images"),
            loop_layout: Layout::HostImage,
        };
        let pool = Pool::open(&config, fake.host()).unwrap();
        assert!(matches!(pool.backend(), PoolBackend::Btrfs { .. }));
        let calls = fake.calls();
        assert!(calls[0].starts_with("format_btrfs"), "{calls:?}");
        assert!(calls.iter().any(|c| c.starts_with("attach")));
        assert!(calls.iter().any(|c| c.starts_with("mount")));
        assert!(calls.iter().any(|c| c.starts_with("enable_quota")));
        assert_eq!(
            std::fs::metadata(dir.path().join("pool.img"))
                .unwrap()
                .len(),
            1 << 30
        );

        // Second open (daemon restart): already mounted, nothing formatted or attached.
        fake.clear_calls();
        Pool::open(&config, fake.host()).unwrap();
        let calls = fake.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("format") || c.starts_with("attach")),
            "{calls:?}"
        );
        assert_eq!(fake.attached().len(), 1);
    }

    #[test]
    fn failed_pool_mount_detaches_the_loop_it_attached() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(true);
        fake.fail_next("mount", libc::EINVAL);
        let config = PoolConfig::Embedded {
            image: dir.path().join("pool.img"),
            mount: dir.path().join("pool"),
            size: 1 << 30,
            images: dir.path().join("images"),
            loop_layout: Layout::HostImage,
        };
        assert!(Pool::open(&config, fake.host()).is_err());
        assert!(fake.attached().is_empty());
    }

    #[test]
    fn btrfs_pool_refuses_a_non_btrfs_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeHost::new(false);
        let err = Pool::open(
            &PoolConfig::Btrfs {
                path: dir.path().into(),
            },
            fake.host(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }
}
