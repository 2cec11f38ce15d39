//! Crash recovery: the daemon killed with SIGKILL after staging and started again;
//! and a "reboot" where mounts and loop devices vanished while it was down.

use std::path::Path;

use stowage_tests::{Daemon, mounts_under};

fn is_mounted(p: &Path) -> bool {
    stowage_tests::mount_options(p).is_some()
}

#[tokio::test]
async fn sigkill_after_staging_then_restart_keeps_volumes_and_leaks_nothing() {
    let mut daemon = Daemon::start("4GiB", &[]);
    let staging_l = daemon.root().join("staging-loop");
    let staging_d = daemon.root().join("staging-dir");
    let target_l = daemon.root().join("target-loop");
    let (loop_id, dir_id) = {
        let mut c = daemon.clients().await;
        let l = c.create("crash-loop", 128 << 20, &[("kind", "loop")]).await;
        let d = c.create("crash-dir", 16 << 20, &[("kind", "dir")]).await;
        c.stage(&l, &staging_l).await.unwrap();
        c.stage(&d, &staging_d).await.unwrap();
        c.publish(&l, &staging_l, &target_l, false).await.unwrap();
        std::fs::write(target_l.join("before-crash"), b"kept").unwrap();
        (l, d)
    };
    let loops_before = daemon.volume_loops();
    assert_eq!(loops_before.len(), 1);

    daemon.kill9();
    daemon.restart();
    let mut c = daemon.clients().await;
    let mut ids = c.list_ids().await;
    ids.sort();
    let mut want = vec![loop_id.clone(), dir_id.clone()];
    want.sort();
    assert_eq!(ids, want, "both volumes still listed");
    assert!(is_mounted(&staging_l) && is_mounted(&staging_d) && is_mounted(&target_l));
    assert_eq!(
        std::fs::read(target_l.join("before-crash")).unwrap(),
        b"kept"
    );
    assert_eq!(
        daemon.volume_loops(),
        loops_before,
        "the same single loop device, none leaked"
    );

    // Everything still works, idempotently, after the restart.
    c.stage(&loop_id, &staging_l).await.unwrap();
    c.unpublish(&loop_id, &target_l).await.unwrap();
    c.unstage(&loop_id, &staging_l).await.unwrap();
    c.unstage(&dir_id, &staging_d).await.unwrap();
    assert!(daemon.volume_loops().is_empty());
    c.delete(&loop_id).await.unwrap();
    c.delete(&dir_id).await.unwrap();
    assert!(c.list_ids().await.is_empty());
}

#[tokio::test]
async fn lost_mounts_are_restored_on_start() {
    let mut daemon = Daemon::start("4GiB", &[]);
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("target");
    let id = {
        let mut c = daemon.clients().await;
        let id = c
            .create("reboot", 128 << 20, &[("kind", "loop"), ("fsType", "ext4")])
            .await;
        c.stage(&id, &staging).await.unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
        std::fs::write(target.join("file"), b"survives").unwrap();
        id
    };
    daemon.kill9();
    // What a reboot does to volume mounts: gone, and the loop device with them.
    for m in [&target, &staging] {
        nix::mount::umount2(m.as_path(), nix::mount::MntFlags::empty()).unwrap();
    }
    for dev in daemon.volume_loops() {
        assert!(
            std::process::Command::new("losetup")
                .arg("-d")
                .arg(&dev)
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(!is_mounted(&target));

    daemon.restart();
    assert!(
        is_mounted(&staging) && is_mounted(&target),
        "{:?}",
        mounts_under(daemon.root())
    );
    assert_eq!(std::fs::read(target.join("file")).unwrap(), b"survives");
    assert_eq!(daemon.volume_loops().len(), 1);
    assert!(daemon.log().contains("restored staging mount"));

    let mut c = daemon.clients().await;
    c.unpublish(&id, &target).await.unwrap();
    c.unstage(&id, &staging).await.unwrap();
    c.delete(&id).await.unwrap();
}
