//! Size enforcement: a directory volume's qgroup limit stops writes; a full pool
//! refuses new volumes with RESOURCE_EXHAUSTED and leaves no trace.

use std::io::Write;

use stowage_proto::csi::v1 as csi;
use stowage_tests::{Daemon, create_req, loops_under};
use tonic::Code;

#[tokio::test]
async fn dir_volume_quota_stops_writes_past_capacity() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("quota", 16 << 20, &[("kind", "dir")]).await;
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("target");
    c.stage(&id, &staging).await.unwrap();
    c.publish(&id, &staging, &target, false).await.unwrap();

    let mut f = std::fs::File::create(target.join("fill")).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut written = 0u64;
    let mut failure = None;
    for _ in 0..64 {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("writing 64 MiB into a 16 MiB volume must fail");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "{err}"
    );
    assert!(
        written <= 16 << 20,
        "wrote {written} bytes past a 16 MiB limit"
    );
    assert!(
        written >= 8 << 20,
        "quota stopped writes far too early: {written}"
    );
    drop(f);

    // Stats report the volume's own size, not the pool's.
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 16 << 20);
    assert!(bytes.used >= 8 << 20, "{bytes:?}");

    c.unpublish(&id, &target).await.unwrap();
    c.unstage(&id, &staging).await.unwrap();
    c.delete(&id).await.unwrap();
}

#[tokio::test]
async fn full_pool_gives_resource_exhausted_and_leaves_no_trace() {
    // Loop images in the pool, so that a loop volume fills it (host images are
    // preallocated on the host's filesystem: pool_layout_tests covers their NO_SPACE).
    let daemon = Daemon::start("1GiB", &["--loop-images", "pool"]);
    let mut c = daemon.clients().await;

    // Fill most of the pool for real: a loop volume written through its mount.
    let id = c.create("filler", 700 << 20, &[("kind", "loop")]).await;
    let staging = daemon.root().join("staging");
    c.stage(&id, &staging).await.unwrap();
    let status = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            "bs=1M",
            "count=600",
            "oflag=direct",
            "status=none",
        ])
        .arg(format!("of={}", staging.join("zeros").display()))
        .status()
        .unwrap();
    assert!(status.success());

    let before: Vec<_> = std::fs::read_dir(daemon.volumes_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let loops_before = loops_under(daemon.root()).len();
    for (name, params) in [
        ("big-loop", &[("kind", "loop")][..]),
        ("big-dir", &[("kind", "dir")][..]),
    ] {
        let err = c
            .controller
            .create_volume(create_req(name, 512 << 20, params))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    }
    // Larger than the whole pool.
    let err = c
        .controller
        .create_volume(create_req("enormous", 1 << 40, &[("kind", "loop")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let after: Vec<_> = std::fs::read_dir(daemon.volumes_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "a failed create left something in the pool");
    assert_eq!(c.list_ids().await, vec![id.clone()]);
    assert_eq!(loops_under(daemon.root()).len(), loops_before);

    let cap = c
        .controller
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity < 512 << 20, "{cap:?}");

    c.unstage(&id, &staging).await.unwrap();
    c.delete(&id).await.unwrap();
}

/// Deleting a volume on btrfs frees its space only when btrfs's cleaner has been
/// through it; a create that needs that space waits for the cleaner and succeeds.
#[tokio::test]
async fn a_create_right_after_a_delete_waits_for_the_space_to_come_back() {
    let daemon = Daemon::start("2GiB", &[]);
    let mut c = daemon.clients().await;
    let pool = daemon.state_dir().join("pool");
    let available = || {
        let st = nix::sys::statvfs::statvfs(&pool).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let big = (available() * 7 / 10) & !((1 << 20) - 1);
    let id = c.create("first", big as i64, &[("kind", "dir")]).await;
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("target");
    c.stage(&id, &staging).await.unwrap();
    c.publish(&id, &staging, &target, false).await.unwrap();
    {
        let mut f = std::fs::File::create(target.join("fill")).unwrap();
        let chunk = vec![0x5au8; 4 << 20];
        for _ in 0..(big - (64 << 20)) / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    c.unpublish(&id, &target).await.unwrap();
    c.unstage(&id, &staging).await.unwrap();
    c.delete(&id).await.unwrap();
    // The space is not back yet (the cleaner runs later): the condition this test is
    // about. A create of the same size must wait for it, not fail.
    let before = available();
    assert!(
        before < big,
        "the space came back at once ({before} >= {big}): nothing to test"
    );
    c.controller
        .create_volume(create_req("second", big as i64, &[("kind", "dir")]))
        .await
        .expect("a create that needs the deleted volume's space succeeds");
}
