//! Pools: where volume data lives. The default is an embedded btrfs filesystem in a
//! sparse image under the state root (loop-attached and mounted by the daemon); an
//! existing btrfs mount or a plain directory on any filesystem can be named instead.
//!
//! Layout inside a pool root:
//! ```text
//! volumes/<id>/            one directory per volume (a subvolume on btrfs)
//! volumes/<id>/disk.img    the image file of a loop volume
//! ```

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::model::{FsType, PoolUsage, VolumeKind, VolumeRecord};
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
    /// The daemon mounts it (the embedded image): it must be a btrfs mount point.
    embedded: bool,
    /// The device of `volumes/` when opened (a plain pool's filesystem).
    root_dev: u64,
    /// Whether it was usable when last looked at (to log changes once).
    healthy: Arc<AtomicBool>,
}

impl Pool {
    /// Opens the pool `config` describes, creating and mounting the embedded image
    /// when needed (an already mounted one, e.g. after a daemon restart, is reused).
    pub fn open(config: &PoolConfig, host: Host) -> Result<Self> {
        let (root, want_btrfs) = match config {
            PoolConfig::Embedded { image, mount, size } => {
                open_embedded(&host, image, mount, *size)?;
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
            embedded: matches!(config, PoolConfig::Embedded { .. }),
            root_dev,
            healthy: Arc::new(AtomicBool::new(true)),
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
                if self.embedded {
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

    /// The directory of volume `id` (which must be a validated id).
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        debug_assert!(crate::manager::is_valid_id(id));
        self.root.join(VOLUMES_DIR).join(id)
    }

    /// The image file of loop volume `id`.
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.volume_dir(id).join(IMAGE_FILE)
    }

    /// The directory (a read-only subvolume on btrfs) of snapshot `id`.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.root.join(SNAPSHOTS_DIR).join(id)
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
            (VolumeKind::Dir | VolumeKind::Image, _) => self.make_dir_volume(rec, &dir),
            (VolumeKind::Loop, None) => {
                let fs = rec.fs.unwrap_or(FsType::Ext4);
                rec.capacity_enforced = true;
                rec.fs_size = rec.capacity;
                self.make_image(&dir.join(IMAGE_FILE), rec.capacity, fs)
            }
            (VolumeKind::Loop, Some(_)) => {
                // The copied filesystem keeps its size (`fs_size`, set by the caller);
                // a larger image is grown now and the filesystem at its next stage.
                rec.capacity_enforced = true;
                self.grow_image(&rec.id, rec.capacity)
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

    /// Grows a loop volume's image file to `size` bytes (never shrinks it).
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
        let dest = self.snapshot_dir(snapshot_id);
        let result = match self.backend {
            PoolBackend::Btrfs { .. } => self.host.btrfs.snapshot(&src, &dest, true).map(|_| ()),
            PoolBackend::Plain => self.host.copier.copy_tree(&src, &dest),
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

    fn make_dir_volume(&self, rec: &mut VolumeRecord, dir: &Path) -> Result<()> {
        match self.backend {
            PoolBackend::Btrfs { .. } => {
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
        if matches!(self.backend, PoolBackend::Btrfs { .. }) {
            // Must happen while the file is empty; reflinks still work between nocow files.
            self.host
                .btrfs
                .set_nocow(&file)
                .ctx(|| format!("set nodatacow on {}", image.display()))?;
        }
        file.set_len(size)
            .ctx(|| format!("size {}", image.display()))?;
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
        for sub in [VOLUMES_DIR, SNAPSHOTS_DIR] {
            let dir = self.root.join(sub);
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

/// Makes a pool readable by root alone: the root (and so everything below it, which
/// containers reach through bind mounts, never through this path) 0700 and every loop
/// image 0600, also those made before this rule.
fn restrict_to_root(root: &Path) -> Result<()> {
    set_mode(root, 0o700)?;
    let volumes = root.join(VOLUMES_DIR);
    set_mode(&volumes, 0o700)?;
    set_mode(&root.join(SNAPSHOTS_DIR), 0o700)?;
    for entry in std::fs::read_dir(&volumes).ctx(|| format!("read {}", volumes.display()))? {
        let entry = entry.ctx(|| format!("read {}", volumes.display()))?;
        let image = entry.path().join(IMAGE_FILE);
        if std::fs::symlink_metadata(&image).is_ok_and(|m| m.is_file()) {
            set_mode(&image, 0o600)?;
        }
    }
    Ok(())
}

/// Sets `path`'s permission bits to `mode` unless they already are.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let meta = std::fs::metadata(path).ctx(|| format!("stat {}", path.display()))?;
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .ctx(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

fn open_embedded(host: &Host, image: &Path, mount: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(mount).ctx(|| format!("create {}", mount.display()))?;
    if image.exists() {
        // Images made before pools were root-only.
        set_mode(image, 0o600)?;
    }
    let mounts = host.mounter.mounts().ctx(|| "read mount table".into())?;
    if mounts
        .iter()
        .any(|m| m.mount_point == mount && m.fs_type == "btrfs")
    {
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
