//! The two non-default pools: an existing btrfs mount named with `--pool btrfs:PATH`,
//! and a plain directory (`--pool dir:PATH`) where directory sizes are not enforced.

use std::path::{Path, PathBuf};
use std::process::Command;

use stowage_proto::csi::v1 as csi;
use stowage_tests::{Daemon, cleanup_under, require_root};

/// A btrfs filesystem in a sparse image, mounted under a temporary directory; unmounted
/// and detached on drop.
struct BtrfsMount {
    dir: tempfile::TempDir,
}

impl BtrfsMount {
    fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("stowage-btrfs-")
            .tempdir()
            .unwrap();
        let image = btrfs_image(&dir.path().join("fs.img"));
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path().join("mnt"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -o loop btrfs image");
        BtrfsMount { dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

/// A sparse 2 GiB file at `image`, formatted btrfs.
fn btrfs_image(image: &Path) -> PathBuf {
    std::fs::File::create(image)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    assert!(
        Command::new("mkfs.btrfs")
            .args(["-q", "-f"])
            .arg(image)
            .status()
            .unwrap()
            .success()
    );
    image.to_path_buf()
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        cleanup_under(self.dir.path());
    }
}

async fn condition(d: &Daemon, id: &str) -> csi::VolumeCondition {
    let mut c = d.clients().await;
    c.controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .volume_condition
        .unwrap()
}

fn write_mib(path: &Path, mib: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    for _ in 0..mib {
        f.write_all(&[7u8; 1 << 20])?;
    }
    f.sync_all()
}

#[tokio::test]
async fn existing_btrfs_mount_as_pool_enforces_dir_quota() {
    let fs = BtrfsMount::new();
    let pool = format!("btrfs:{}", fs.mnt().display());
    let daemon = Daemon::start("1GiB", &["--pool", &pool]);
    let mut c = daemon.clients().await;
    let id = c.create("on-existing", 8 << 20, &[("kind", "dir")]).await;
    assert!(
        fs.mnt().join("volumes").join(&id).is_dir(),
        "volume lives in the named pool"
    );
    assert!(
        !daemon.state_dir().join("pool.img").exists(),
        "no embedded image was made"
    );
    let staging = daemon.root().join("staging");
    c.stage(&id, &staging).await.unwrap();
    let err = write_mib(&staging.join("big"), 32).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "{err}"
    );
    let cond = condition(&daemon, &id).await;
    assert!(!cond.abnormal, "{cond:?}");
    c.unstage(&id, &staging).await.unwrap();
    c.delete(&id).await.unwrap();
    assert!(!fs.mnt().join("volumes").join(&id).exists());
}

#[tokio::test]
async fn plain_directory_pool_records_but_does_not_enforce_dir_capacity() {
    require_root();
    let plain = tempfile::Builder::new()
        .prefix("stowage-plain-")
        .tempdir()
        .unwrap();
    let pool = format!("dir:{}", plain.path().display());
    let daemon = Daemon::start("1GiB", &["--pool", &pool]);
    let mut c = daemon.clients().await;
    let dir_id = c.create("plain-dir", 4 << 20, &[("kind", "dir")]).await;
    let loop_id = c.create("plain-loop", 64 << 20, &[("kind", "loop")]).await;
    let staging = daemon.root().join("staging");
    c.stage(&dir_id, &staging).await.unwrap();
    // Not enforced: 8 MiB fits into a "4 MiB" directory volume.
    write_mib(&staging.join("over"), 8).unwrap();
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: dir_id.clone(),
            volume_path: staging.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let msg = stats.volume_condition.unwrap().message;
    assert!(msg.contains("not enforced"), "{msg}");

    // A loop volume on a plain pool is still size-bounded by its image.
    let lstaging = daemon.root().join("lstaging");
    c.stage(&loop_id, &lstaging).await.unwrap();
    let err = write_mib(&lstaging.join("big"), 128).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    c.unstage(&loop_id, &lstaging).await.unwrap();
    c.unstage(&dir_id, &staging).await.unwrap();
    c.delete(&dir_id).await.unwrap();
    c.delete(&loop_id).await.unwrap();
    assert_eq!(
        std::fs::read_dir(plain.path().join("volumes"))
            .unwrap()
            .count(),
        0
    );
}

/// A pool whose mount disappears or turns read-only under the daemon is not ready and
/// offers no capacity until it is back; the log says why.
#[tokio::test]
async fn a_lost_pool_is_noticed_and_its_return_too() {
    let daemon = Daemon::start("2GiB", &[]);
    let mut c = daemon.clients().await;
    let pool = daemon.state_dir().join("pool");
    async fn ready(c: &mut stowage_tests::Clients) -> bool {
        c.identity
            .probe(csi::ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
            .unwrap_or(false)
    }
    async fn capacity(c: &mut stowage_tests::Clients) -> i64 {
        c.controller
            .get_capacity(csi::GetCapacityRequest::default())
            .await
            .unwrap()
            .into_inner()
            .available_capacity
    }
    assert!(ready(&mut c).await);
    assert!(capacity(&mut c).await > 0);
    let device = stowage_tests::loops_under(&daemon.state_dir().join("pool.img"))
        .pop()
        .expect("the pool's loop device");

    // Unmounted under it: the path is now a plain directory of the host's disk.
    nix::mount::umount2(&pool, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(!ready(&mut c).await, "ready without its pool");
    assert_eq!(capacity(&mut c).await, 0, "the host disk's space offered");
    assert!(daemon.log().contains("pool lost"), "{}", daemon.log());
    let status = std::process::Command::new("mount")
        .arg(&device)
        .arg(&pool)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(ready(&mut c).await, "ready again once mounted");
    assert!(capacity(&mut c).await > 0);

    // Read-only, then writable again. (The mount itself: the filesystem has files
    // open for writing, the layer store's lock among them.)
    let remount = |how: &str| {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,bind,{how}")])
            .arg(&pool)
            .status()
            .unwrap();
        assert!(status.success(), "remount {how}");
    };
    remount("ro");
    assert!(!ready(&mut c).await, "ready on a read-only pool");
    assert_eq!(capacity(&mut c).await, 0);
    remount("rw");
    assert!(ready(&mut c).await);
    assert!(daemon.log().contains("pool is back"));
}

/// A btrfs filesystem on a loop device standing in for a disk of its own; detached
/// (after whatever mounted it is gone) on drop.
struct BtrfsDevice {
    dir: tempfile::TempDir,
    device: PathBuf,
}

impl BtrfsDevice {
    fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("stowage-device-")
            .tempdir()
            .unwrap();
        let image = btrfs_image(&dir.path().join("disk.img"));
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup");
        let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        BtrfsDevice { dir, device }
    }
}

impl Drop for BtrfsDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        cleanup_under(self.dir.path());
    }
}

#[tokio::test]
async fn a_btrfs_device_as_pool_is_mounted_by_the_daemon_and_holds_loop_images() {
    let disk = BtrfsDevice::new();
    let pool_arg = format!("btrfs:{}", disk.device.display());
    let mut daemon = Daemon::start("1GiB", &["--pool", &pool_arg]);
    let pool = daemon.state_dir().join("pool");
    let source = Command::new("findmnt")
        .args(["-no", "SOURCE,FSTYPE"])
        .arg(&pool)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&source.stdout).trim(),
        format!("{} btrfs", disk.device.display()),
        "the daemon mounted the device at its pool"
    );
    let mut c = daemon.clients().await;
    let lp = c
        .create_volume("db", 64 << 20, &[("kind", "loop"), ("fsType", "ext4")])
        .await;
    // No host-image directory beside a device: the image is a file of the device's btrfs.
    assert_eq!(lp.volume_context["layout"], "pool-image");
    assert!(
        pool.join("volumes")
            .join(&lp.volume_id)
            .join("disk.img")
            .exists()
    );
    let dir = c.create("files", 64 << 20, &[("kind", "dir")]).await;
    let staging = daemon.root().join("staging");
    c.stage(&dir, &staging).await.unwrap();
    write_mib(&staging.join("data"), 3).unwrap();
    assert!(
        write_mib(&staging.join("too-much"), 80).is_err(),
        "quota enforced"
    );
    c.unstage(&dir, &staging).await.unwrap();
    drop(c);

    // A restart finds the device mounted and keeps using it.
    daemon.restart();
    let mut c = daemon.clients().await;
    c.stage(&dir, &staging).await.unwrap();
    assert_eq!(
        std::fs::metadata(staging.join("data")).unwrap().len(),
        3 << 20
    );
    c.unstage(&dir, &staging).await.unwrap();
    c.delete(&dir).await.unwrap();
    c.delete(&lp.volume_id).await.unwrap();

    // A device node that is not a block device is refused at start.
    daemon.stop();
    daemon.add_args(&["--pool", "btrfs:/dev/null"]);
    let (status, out) = daemon.run_to_exit();
    assert!(!status.success());
    assert!(out.contains("is not a block device"), "{out}");
}
