//! create → stage → publish → write → unpublish → unstage → delete, for each back end,
//! on a real daemon with real mounts.

use std::io::Write;

use stowage_tests::{Daemon, loops_under, mount_options, mounts_under};

async fn lifecycle(params: &[(&str, &str)], bytes: i64, expect_fs: &str) {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("life", bytes, params).await;
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("pods/a/target");
    let ro_target = daemon.root().join("pods/b/target");

    c.stage(&id, &staging).await.expect("stage");
    c.stage(&id, &staging)
        .await
        .expect("stage again is a no-op");
    c.publish(&id, &staging, &target, false)
        .await
        .expect("publish");
    c.publish(&id, &staging, &ro_target, true)
        .await
        .expect("publish read-only");

    let fs = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = fs
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(staging.to_str().unwrap()))
        .expect("staging is mounted");
    assert!(line.contains(&format!(" - {expect_fs} ")), "{line}");
    let opts = mount_options(&target).expect("target mounted");
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
    assert!(opts.starts_with("rw"), "{opts}");
    assert!(mount_options(&ro_target).unwrap().starts_with("ro"));

    let payload = vec![0x5au8; 3 << 20];
    {
        let mut f = std::fs::File::create(target.join("data.bin")).unwrap();
        f.write_all(&payload).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::read(ro_target.join("data.bin")).unwrap(), payload);
    let err = std::fs::File::create(ro_target.join("nope")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    if expect_fs == "btrfs" {
        // A directory volume's data is the subvolume itself.
        let stored = daemon.volume_dir(&id).join("data.bin");
        assert_eq!(
            std::fs::metadata(stored).unwrap().len(),
            payload.len() as u64
        );
    } else {
        let image = daemon.volume_dir(&id).join("disk.img");
        assert_eq!(
            loops_under(&image).len(),
            1,
            "exactly one loop device for the image"
        );
        let dio = std::fs::read_to_string(format!(
            "/sys/block/{}/loop/dio",
            loops_under(&image)[0]
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        ))
        .unwrap();
        assert_eq!(dio.trim(), "1", "loop device uses direct I/O");
    }

    c.unpublish(&id, &ro_target).await.expect("unpublish ro");
    c.unpublish(&id, &target).await.expect("unpublish");
    c.unpublish(&id, &target)
        .await
        .expect("unpublish again is a no-op");
    assert!(!target.exists(), "target directory removed");
    c.unstage(&id, &staging).await.expect("unstage");
    c.unstage(&id, &staging)
        .await
        .expect("unstage again is a no-op");
    assert!(
        !mounts_under(daemon.root())
            .iter()
            .any(|m| m.starts_with(&staging))
    );
    assert!(
        daemon.volume_loops().is_empty(),
        "no loop device left for the volume"
    );

    // Data persists across unstage/stage.
    c.stage(&id, &staging).await.expect("restage");
    assert_eq!(std::fs::read(staging.join("data.bin")).unwrap(), payload);
    c.unstage(&id, &staging).await.expect("unstage");

    c.delete(&id).await.expect("delete");
    c.delete(&id).await.expect("delete again is a no-op");
    assert!(!daemon.volumes_dir().join(&id).exists());
    assert!(!daemon.host_images_dir().join(&id).exists());
    assert!(c.list_ids().await.is_empty());
}

#[tokio::test]
async fn dir_volume_lifecycle() {
    lifecycle(&[("kind", "dir")], 64 << 20, "btrfs").await;
}

#[tokio::test]
async fn loop_ext4_volume_lifecycle() {
    lifecycle(&[("kind", "loop"), ("fsType", "ext4")], 256 << 20, "ext4").await;
}

#[tokio::test]
async fn loop_xfs_volume_lifecycle() {
    lifecycle(&[("kind", "loop"), ("fsType", "xfs")], 512 << 20, "xfs").await;
}
