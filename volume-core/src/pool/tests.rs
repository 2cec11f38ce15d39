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
fn embedded_pool_refuses_a_btrfs_at_its_mount_point_that_is_not_its_image() {
    // Another daemon's pool mounted where this one's goes (two daemons on one
    // kernel): reused, it would hand this daemon the other's volumes.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeHost::new(true);
    let mount = dir.path().join("pool");
    std::fs::create_dir_all(&mount).unwrap();
    let target = crate::os::MountPoint::own(&mount).unwrap();
    fake.host()
        .mounter
        .mount(
            Path::new("/dev/loop9"),
            &target,
            "btrfs",
            &MountOptions::volume_defaults(),
        )
        .unwrap();
    let config = PoolConfig::Embedded {
        image: dir.path().join("pool.img"),
        mount,
        size: 1 << 30,
        images: dir.path().join("images"),
        loop_layout: Layout::HostImage,
    };
    let err = Pool::open(&config, fake.host()).unwrap_err();
    assert!(
        matches!(err, Error::FailedPrecondition(ref m) if m.contains("/dev/loop9")),
        "{err:?}"
    );
    assert!(fake.attached().is_empty());
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
