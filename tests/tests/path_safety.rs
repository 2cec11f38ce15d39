//! A caller's staging and target paths never redirect a mount, and unstage/unpublish
//! undo only the volume's own mounts: real daemon, real mounts (root).

use std::path::{Path, PathBuf};

use stowage_tests::{Daemon, mounts_under};
use tonic::Code;

/// A tmpfs at `path` (made if missing), unmounted at drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(path.join("marker"), b"tmpfs").unwrap();
        Tmpfs(path.to_path_buf())
    }

    fn is_mounted(&self) -> bool {
        self.0.join("marker").exists()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

#[tokio::test]
async fn a_symlinked_or_dotted_staging_path_mounts_nothing_where_it_points() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("v", 64 << 20, &[("kind", "dir")]).await;
    let victim = daemon.root().join("etc");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("passwd"), b"root:x:0:0").unwrap();
    std::os::unix::fs::symlink(&victim, daemon.root().join("link")).unwrap();
    std::fs::create_dir(daemon.root().join("a")).unwrap();
    for staging in [
        daemon.root().join("link"),
        daemon.root().join("link/sub"),
        PathBuf::from(format!("{}/a/../etc", daemon.root().display())),
        PathBuf::from(format!("{}/./etc", daemon.root().display())),
    ] {
        let err = c.stage(&id, &staging).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{staging:?}: {err}");
    }
    assert!(
        !is_mount_point(&victim),
        "the link's target was mounted over"
    );
    assert_eq!(std::fs::read(victim.join("passwd")).unwrap(), b"root:x:0:0");
    assert!(!victim.join("sub").exists());

    // A staged volume: a target through a link, or inside the state directory, or
    // equal to the staging path, is refused too.
    let staging = daemon.root().join("staging");
    c.stage(&id, &staging).await.unwrap();
    for target in [
        daemon.root().join("link/target"),
        daemon.state_dir().join("pool/volumes/x"),
        staging.clone(),
    ] {
        let err = c.publish(&id, &staging, &target, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{target:?}: {err}");
    }
    assert!(!is_mount_point(&victim.join("target")));
    assert!(!victim.join("target").exists());
    c.unstage(&id, &staging).await.unwrap();
    assert!(
        !staging.exists(),
        "the staging directory it made is removed"
    );
}

#[tokio::test]
async fn unstage_and_unpublish_touch_only_the_volumes_own_mounts() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let a = c.create("a", 64 << 20, &[("kind", "loop")]).await;
    let b = c.create("b", 64 << 20, &[("kind", "dir")]).await;
    let (sa, sb) = (daemon.root().join("sa"), daemon.root().join("sb"));
    c.stage(&a, &sa).await.unwrap();
    c.stage(&b, &sb).await.unwrap();
    let tmpfs = Tmpfs::mount(&daemon.root().join("tmpfs"));

    // Unstage of a at an unrelated tmpfs and at b's staging: refused, nothing unmounted.
    for wrong in [&tmpfs.0, &sb] {
        let err = c.unstage(&a, wrong).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{wrong:?}: {err}");
    }
    assert!(tmpfs.is_mounted());
    assert!(is_mount_point(&sa) && is_mount_point(&sb));
    // a is still staged: it cannot be deleted under its mount.
    assert_eq!(
        c.delete(&a).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // Unpublish of targets a is not published at: OK, and nothing is touched.
    c.unpublish(&a, &tmpfs.0).await.unwrap();
    c.unpublish(&a, &sb).await.unwrap();
    assert!(tmpfs.is_mounted() && is_mount_point(&sb));

    // A mount over a's staging is not a's: unstage refuses and leaves both.
    let over = Tmpfs::mount(&sa);
    let err = c.unstage(&a, &sa).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(over.is_mounted());
    drop(over);
    c.unstage(&a, &sa).await.unwrap();
    assert!(!is_mount_point(&sa));

    // A target published, then covered by another mount: unpublish refuses.
    let target = daemon.root().join("pod/t");
    c.publish(&b, &sb, &target, false).await.unwrap();
    let over = Tmpfs::mount(&target);
    let err = c.unpublish(&b, &target).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(over.is_mounted());
    drop(over);
    c.unpublish(&b, &target).await.unwrap();
    assert!(!target.exists());
    c.unstage(&b, &sb).await.unwrap();
    c.delete(&a).await.unwrap();
    c.delete(&b).await.unwrap();
}

#[tokio::test]
async fn concurrent_stage_and_unstage_over_several_paths_leave_records_equal_to_mounts() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let id = c.create("v", 64 << 20, &[("kind", "loop")]).await;
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| daemon.root().join(format!("s{i}")))
        .collect();
    let agree = |why: &str| {
        let mounted: Vec<PathBuf> = paths
            .iter()
            .filter(|p| is_mount_point(p))
            .cloned()
            .collect();
        let inspect = stowage_tests::vol::json(
            stowage_tests::vol::ok(&daemon, &["--output", "json", "inspect", "v"]).trim(),
        );
        let recorded: Vec<PathBuf> = inspect["staging_path"]
            .as_str()
            .map(PathBuf::from)
            .into_iter()
            .collect();
        assert_eq!(recorded, mounted, "{why}: record against mount table");
    };
    // The steps the storm below can interleave, in the order that broke the records:
    // staged at s0, unstaged at s1 (not where it is staged), staged at s2.
    c.stage(&id, &paths[0]).await.unwrap();
    let _ = c.unstage(&id, &paths[1]).await;
    let _ = c.stage(&id, &paths[2]).await;
    agree("stage s0, unstage s1, stage s2");
    c.unstage(&id, &paths[0]).await.unwrap();
    agree("unstaged");
    let mut calls = Vec::new();
    for n in 0..30 {
        let mut c = c.clone();
        let (id, path) = (id.clone(), paths[n % paths.len()].clone());
        calls.push(tokio::spawn(async move {
            if n % 2 == 0 {
                let _ = c.stage(&id, &path).await;
            } else {
                let _ = c.unstage(&id, &path).await;
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    agree("after 30 concurrent calls");
    // Whatever the record says, unstaging at every path leaves nothing mounted, and the
    // volume can then be deleted (the record and the mount table agree).
    for p in &paths {
        let _ = c.unstage(&id, p).await;
    }
    for p in &paths {
        assert!(!is_mount_point(p), "{p:?} still mounted");
    }
    c.delete(&id).await.expect("delete after unstaging");
}
