//! The data path's layouts on a real node: where each volume's data sits, what a
//! workload sees of its size, and that volumes made by an earlier layout keep working
//! beside new ones. Needs root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use stowage_tests::vol::json_lines;
use stowage_tests::{
    Daemon, fs_total_bytes, loops_under, pattern, require_root, sha256, snapshot_source,
    write_synced,
};

const MIB: i64 = 1 << 20;
/// FS_NOCOW_FL, as lsattr shows it: `C`.
fn nocow(path: &Path) -> bool {
    let out = std::process::Command::new("lsattr")
        .arg("-d")
        .arg(path)
        .output()
        .expect("lsattr");
    assert!(out.status.success(), "lsattr {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().unwrap_or("").contains('C')
}

fn backing_file(device: &Path) -> String {
    let name = device.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .unwrap()
        .trim_end()
        .to_string()
}

#[tokio::test]
async fn default_layouts_one_loop_device_over_a_host_file_and_nodatacow_directories() {
    require_root();
    let daemon = Daemon::start("2GiB", &[]);
    let mut c = daemon.clients().await;

    let dir = c.create_volume("dir", 64 * MIB, &[("kind", "dir")]).await;
    assert_eq!(dir.volume_context["layout"], "btrfs-nocow");
    let lp = c
        .create_volume("db", 64 * MIB, &[("kind", "loop"), ("fsType", "ext4")])
        .await;
    assert_eq!(lp.volume_context["layout"], "host-image");

    // The image is a preallocated file on the state directory's own filesystem,
    // not inside the pool image.
    let image = daemon
        .host_images_dir()
        .join(&lp.volume_id)
        .join("disk.img");
    let meta = std::fs::metadata(&image).expect("image on the host filesystem");
    assert_eq!(
        meta.dev(),
        std::fs::metadata(daemon.state_dir()).unwrap().dev()
    );
    assert!(
        meta.blocks() * 512 >= 64 << 20,
        "preallocated: {} blocks",
        meta.blocks()
    );
    assert!(!daemon.volumes_dir().join(&lp.volume_id).exists());

    let (s_dir, s_loop) = (daemon.root().join("s-dir"), daemon.root().join("s-loop"));
    c.stage(&dir.volume_id, &s_dir).await.unwrap();
    c.stage(&lp.volume_id, &s_loop).await.unwrap();
    // One loop device for the volume, backed by that file; the only other loop
    // device of this daemon is the pool's.
    let loops = loops_under(&daemon.host_images_dir());
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(backing_file(&loops[0]), image.display().to_string());
    assert_eq!(loops_under(daemon.state_dir().as_path()).len(), 2);

    // What a workload sees of its size: the loop volume's filesystem.
    let total = fs_total_bytes(&s_loop);
    assert!(total <= 64 << 20 && total > 48 << 20, "{total}");

    // Files made in the directory volume are nodatacow (written in place).
    let f = s_dir.join("table.db");
    write_synced(&f, &pattern(1 << 20, 7));
    assert!(nocow(&f), "{} is nodatacow", f.display());

    // `vol inspect` says which layout each volume uses.
    let rows = json_lines(&daemon, &["inspect", "db"]);
    assert_eq!(rows[0]["layout"], "host-image");
    let rows = json_lines(&daemon, &["inspect", "dir"]);
    assert_eq!(rows[0]["layout"], "btrfs-nocow");

    c.unstage(&dir.volume_id, &s_dir).await.unwrap();
    c.unstage(&lp.volume_id, &s_loop).await.unwrap();
    assert!(loops_under(&daemon.host_images_dir()).is_empty());
    c.delete(&lp.volume_id).await.unwrap();
    c.delete(&dir.volume_id).await.unwrap();
    assert!(!image.exists());
    assert!(daemon.volume_entries().is_empty());
}

#[tokio::test]
async fn pool_images_of_an_earlier_layout_keep_working_beside_host_images() {
    require_root();
    // Loop volumes made in the pool, as releases before host images did.
    let mut daemon = Daemon::start("2GiB", &["--loop-images", "pool"]);
    let mut c = daemon.clients().await;
    let old = c
        .create("old", 64 * MIB, &[("kind", "loop"), ("fsType", "ext4")])
        .await;
    assert!(daemon.volumes_dir().join(&old).join("disk.img").exists());
    let staging = daemon.root().join("staging");
    c.stage(&old, &staging).await.unwrap();
    let data = pattern(3 << 20, 11);
    write_synced(&staging.join("data"), &data);
    let digest = sha256(&staging.join("data"));
    c.unstage(&old, &staging).await.unwrap();
    let snap = c.snapshot("old-snap", &old).await.snapshot_id;
    drop(c);

    // The next start makes host images: the old volume stays where it is.
    daemon.restart_with(&["--loop-images", "host"]);
    let mut c = daemon.clients().await;
    let rows = json_lines(&daemon, &["inspect", "old"]);
    assert_eq!(rows[0]["layout"], "pool-image");
    c.stage(&old, &staging).await.unwrap();
    assert_eq!(sha256(&staging.join("data")), digest);
    c.unstage(&old, &staging).await.unwrap();

    // Restoring its snapshot makes a host image holding the same data, larger.
    let restored = c
        .create_from(
            "restored",
            128 * MIB,
            &[("kind", "loop"), ("fsType", "ext4")],
            snapshot_source(&snap),
        )
        .await
        .unwrap();
    assert_eq!(restored.volume_context["layout"], "host-image");
    let image = daemon
        .host_images_dir()
        .join(&restored.volume_id)
        .join("disk.img");
    assert!(std::fs::metadata(&image).unwrap().blocks() * 512 >= 128 << 20);
    c.stage(&restored.volume_id, &staging).await.unwrap();
    assert_eq!(sha256(&staging.join("data")), digest);
    let total = fs_total_bytes(&staging);
    assert!(
        total > 100 << 20,
        "grown to the larger volume at stage: {total}"
    );
    c.unstage(&restored.volume_id, &staging).await.unwrap();

    // A snapshot of a host image is a copy beside it, and restores too.
    let snap2 = c
        .snapshot("restored-snap", &restored.volume_id)
        .await
        .snapshot_id;
    assert!(
        daemon
            .state_dir()
            .join("images/snapshots")
            .join(&snap2)
            .join("disk.img")
            .exists()
    );
    let again = c
        .create_from(
            "again",
            128 * MIB,
            &[("kind", "loop"), ("fsType", "ext4")],
            snapshot_source(&snap2),
        )
        .await
        .unwrap();
    c.stage(&again.volume_id, &staging).await.unwrap();
    assert_eq!(sha256(&staging.join("data")), digest);
    c.unstage(&again.volume_id, &staging).await.unwrap();

    for s in [&snap, &snap2] {
        c.delete_snapshot(s).await.unwrap();
    }
    for v in [&again.volume_id, &restored.volume_id, &old] {
        c.delete(v).await.unwrap();
    }
    assert!(daemon.volume_entries().is_empty());
    assert_eq!(
        std::fs::read_dir(daemon.state_dir().join("images/snapshots"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn compression_of_a_nodatacow_volume_walks_only_the_volume_itself() {
    require_root();
    let daemon = Daemon::start("2GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("squeeze", 64 * MIB, &[("kind", "dir")]).await;
    let (staging, target) = (daemon.root().join("staging"), daemon.root().join("target"));
    c.stage_and_publish(&id, &staging, &target).await;
    let before = target.join("before.bin");
    write_synced(&before, &pattern(1 << 20, 3));
    // What a container could leave in its volume: a link to the host and a FIFO.
    let outside = daemon.root().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("escape")).unwrap();
    nix::unistd::mkfifo(
        &target.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    // `none` on nodatacow data, then zstd, then none again: each succeeds, walking
    // neither through the link (the host's ext4 would refuse the property) nor into
    // the FIFO (an open of it would block).
    for value in ["none", "zstd", "none", "zstd"] {
        stowage_tests::vol::ok(
            &daemon,
            &["modify", "squeeze", &format!("compression={value}")],
        );
    }
    let rows = json_lines(&daemon, &["inspect", "squeeze"]);
    assert_eq!(rows[0]["layout"], "btrfs-subvolume");
    assert!(nocow(&before), "data written before stays nodatacow");
    let after = target.join("after.bin");
    write_synced(&after, &pattern(1 << 20, 4));
    assert!(
        !nocow(&after),
        "new files are copy-on-write, so they can be compressed"
    );
    let out = std::process::Command::new("btrfs")
        .args(["property", "get"])
        .arg(&after)
        .arg("compression")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "compression=zstd"
    );
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.unwrap();
}

#[tokio::test]
async fn a_start_with_another_pool_is_refused_while_host_images_are_there() {
    require_root();
    let mut daemon = Daemon::start("2GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("kept", 64 * MIB, &[("kind", "loop")]).await;
    drop(c);
    daemon.stop();
    let plain = daemon.root().join("plain-pool");
    std::fs::create_dir(&plain).unwrap();
    daemon.add_args(&["--pool", &format!("dir:{}", plain.display())]);
    let (status, out) = daemon.run_to_exit();
    assert!(!status.success());
    assert!(out.contains("layout host-image"), "{out}");
    // The embedded pool again: the volume is there.
    daemon.add_args(&["--pool", "embedded"]);
    daemon.restart();
    let mut c = daemon.clients().await;
    assert_eq!(c.list_ids().await, vec![id.clone()]);
    c.delete(&id).await.unwrap();
}
