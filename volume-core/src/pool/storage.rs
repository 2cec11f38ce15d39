//! A volume's storage in the pool: allocating it (subvolume and qgroup limit, or image
//! file, preallocated, nodatacow, formatted), growing, limiting, snapshotting and
//! releasing it, and finding what no record names.

use super::*;

impl Pool {
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
    pub(super) fn wait_for_cleaner(&self) -> bool {
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

    pub(super) fn allocate_once(
        &self,
        rec: &mut VolumeRecord,
        origin: Option<&Path>,
    ) -> Result<()> {
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
    pub(super) fn allocate_host_image(
        &self,
        rec: &mut VolumeRecord,
        origin: Option<&Path>,
    ) -> Result<()> {
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
    pub(super) fn copy_image_if_missing(&self, src: &Path, dir: &Path) -> Result<()> {
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
    pub(super) fn nocow_dir(&self, dir: &Path) -> Result<()> {
        let d = std::fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
        self.mark_nocow(&d, dir)
    }

    /// Marks `file` (at `path`; an empty file, or a directory for what is made in it)
    /// nodatacow: required in a btrfs pool, where the host has the flag for a host
    /// image (only a btrfs host does), nothing elsewhere.
    pub(super) fn mark_nocow(&self, file: &std::fs::File, path: &Path) -> Result<()> {
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
    pub(super) fn preallocate_image(
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
    pub(super) fn is_host_image_entry(&self, path: &Path) -> bool {
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

    pub(super) fn make_dir_volume(
        &self,
        rec: &mut VolumeRecord,
        dir: &Path,
        fresh: bool,
    ) -> Result<()> {
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

    pub(super) fn make_image(&self, image: &Path, size: u64, fs: FsType) -> Result<()> {
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

    pub(super) fn remove_dir(&self, dir: &Path) -> Result<()> {
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

/// Allocates `file`'s blocks up to `size` bytes (its length becomes at least `size`).
pub(super) fn preallocate(file: &std::fs::File, size: u64) -> nix::Result<()> {
    let len = i64::try_from(size).map_err(|_| nix::errno::Errno::EFBIG)?;
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
}
