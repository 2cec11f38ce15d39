//! Opening a pool: the embedded image (made, attached, mounted or reused), a btrfs
//! device the daemon mounts, and the root's permissions.

use super::*;

/// Makes a pool readable by root alone: the root (and so everything below it, which
/// containers reach through bind mounts, never through this path) 0700 and every loop
/// image 0600, also those made before this rule.
pub(super) fn restrict_to_root(root: &Path) -> Result<()> {
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

/// The source of the btrfs mounted at `mount`, if one is (the pool, after a
/// daemon restart).
fn btrfs_source_at(host: &Host, mount: &Path) -> Result<Option<String>> {
    let mounts = host.mounter.mounts().ctx(|| "read mount table".into())?;
    Ok(mounts
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount && m.fs_type == "btrfs")
        .map(|m| m.source))
}

/// Mounts the btrfs on block device `device` at `mount` (reusing a mount already there).
pub(super) fn open_device(host: &Host, device: &Path, mount: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device).ctx(|| format!("stat {}", device.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::InvalidArgument(format!(
            "pool device {} is not a block device",
            device.display()
        )));
    }
    std::fs::create_dir_all(mount).ctx(|| format!("create {}", mount.display()))?;
    if btrfs_source_at(host, mount)?.is_some() {
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

pub(super) fn open_embedded(host: &Host, image: &Path, mount: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(mount).ctx(|| format!("create {}", mount.display()))?;
    if image.exists() {
        // Images made before pools were root-only.
        crate::mode::set_mode(image, 0o600)?;
    }
    if let Some(source) = btrfs_source_at(host, mount)? {
        // Only this image's own loop device: another daemon's pool mounted here (two
        // daemons on one kernel) would hand this one the other's volumes.
        let ours = host.loops.find(image).ctx(|| "list loop devices".into())?;
        if !ours.iter().any(|l| l.device == Path::new(&source)) {
            return Err(Error::FailedPrecondition(format!(
                "the pool's mount point {} holds {source}, which is not bound to {}: \
                 unmount it (another pool's filesystem?)",
                mount.display(),
                image.display()
            )));
        }
        tracing::info!(pool = %mount.display(), device = %source, "embedded pool already mounted");
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
