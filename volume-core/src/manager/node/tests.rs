use crate::error::Error;
use crate::manager::node::{PublishOptions, StageOptions};
use crate::manager::tests::{fixture, req};

#[test]
fn loop_stage_attaches_and_mounts_once_and_unstage_undoes_it() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
    let staging = f.dir.path().join("staging");
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    let calls = f.fake.calls();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("attach")).count(),
        1,
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("mount ")).count(),
        1,
        "{calls:?}"
    );
    assert_eq!(f.fake.attached().len(), 1);
    let staged = f.mgr.get(&rec.id).unwrap().staging.unwrap();
    assert_eq!(staged.loop_device.unwrap(), f.fake.attached()[0].device);

    f.mgr.unstage(&rec.id, &staging).unwrap();
    f.mgr.unstage(&rec.id, &staging).unwrap();
    assert!(f.fake.attached().is_empty());
    assert!(f.fake.mounted().is_empty());
    assert!(f.mgr.get(&rec.id).unwrap().staging.is_none());
}

#[test]
fn failed_mount_detaches_and_forgets_staging() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
    f.fake.fail_next("mount", libc::EUCLEAN);
    let staging = f.dir.path().join("staging");
    assert!(
        f.mgr
            .stage(&rec.id, &staging, &StageOptions::default())
            .is_err()
    );
    assert!(f.fake.attached().is_empty());
    assert!(f.mgr.get(&rec.id).unwrap().staging.is_none());
}

#[test]
fn xfs_is_mounted_nouuid_so_restores_and_clones_mount_beside_their_source() {
    let f = fixture(true);
    let mut r = req("x", "loop", 300 << 20);
    r.params = crate::params::VolumeParams::parse(
        &[
            ("kind".to_string(), "loop".to_string()),
            ("fsType".to_string(), "xfs".to_string()),
        ]
        .into_iter()
        .collect(),
        None,
    )
    .unwrap();
    let xfs = f.mgr.create(&r).unwrap();
    let ext4 = f.mgr.create(&req("e", "loop", 64 << 20)).unwrap();
    for (v, p) in [(&xfs, "sx"), (&ext4, "se")] {
        f.mgr
            .stage(&v.id, &f.dir.path().join(p), &StageOptions::default())
            .unwrap();
    }
    let mounts: Vec<String> = f
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount "))
        .collect();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert!(
        mounts[0].contains(" xfs ") && mounts[0].ends_with(" nouuid"),
        "{mounts:?}"
    );
    assert!(!mounts[1].contains("nouuid"), "{mounts:?}");
}

#[test]
fn stage_with_wrong_fs_type_is_invalid() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
    let opts = StageOptions {
        fs_type: Some("xfs".into()),
        ..Default::default()
    };
    let err = f
        .mgr
        .stage(&rec.id, &f.dir.path().join("s"), &opts)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

#[test]
fn publish_requires_staging_is_idempotent_and_conflicts_on_read_only_change() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
    let staging = f.dir.path().join("staging");
    let target = f.dir.path().join("target");
    let rw = PublishOptions::default();
    assert!(matches!(
        f.mgr.publish(&rec.id, &staging, &target, &rw),
        Err(Error::FailedPrecondition(_))
    ));
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    f.mgr.publish(&rec.id, &staging, &target, &rw).unwrap();
    f.mgr.publish(&rec.id, &staging, &target, &rw).unwrap();
    let binds = f
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("bind"))
        .count();
    assert_eq!(binds, 2, "one bind for staging, one for the target");
    let ro = PublishOptions {
        read_only: true,
        ..Default::default()
    };
    assert!(matches!(
        f.mgr.publish(&rec.id, &staging, &target, &ro),
        Err(Error::PublishConflict(_))
    ));
    assert!(matches!(
        f.mgr.unstage(&rec.id, &staging),
        Err(Error::FailedPrecondition(_))
    ));
    f.mgr.unpublish(&rec.id, &target).unwrap();
    f.mgr.unpublish(&rec.id, &target).unwrap();
    assert!(!target.exists());
    f.mgr.unstage(&rec.id, &staging).unwrap();
    assert!(f.fake.mounted().is_empty());
}

#[test]
fn relative_paths_and_unknown_volumes_are_refused() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
    assert!(matches!(
        f.mgr
            .stage(&rec.id, "rel/path".as_ref(), &StageOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        f.mgr.stage(
            "v-0123456789abcdef0123456789abcdef",
            "/x".as_ref(),
            &StageOptions::default()
        ),
        Err(Error::VolumeNotFound(_))
    ));
}

#[test]
fn stats_only_for_known_mounted_paths() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("d", "dir", 8 << 20)).unwrap();
    let staging = f.dir.path().join("staging");
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    let (usage, health) = f.mgr.stats(&rec.id, &staging).unwrap();
    assert_eq!(usage.total_bytes, 8 << 20);
    assert_eq!(usage.used_bytes, 16384);
    assert!(!health.abnormal, "{health:?}");
    assert!(matches!(
        f.mgr.stats(&rec.id, "/some/path".as_ref()),
        Err(Error::PathNotFound { .. })
    ));
}

fn image_fixture(
    overlay: &str,
) -> (
    crate::manager::tests::Fixture,
    crate::model::VolumeRecord,
    [String; 2],
) {
    let f = fixture(true);
    let keys = ["a".repeat(64), "b".repeat(64)];
    for k in &keys {
        std::fs::create_dir_all(f.dir.path().join("layers").join(k)).unwrap();
    }
    let p = std::collections::HashMap::from([
        ("kind".to_string(), "image".to_string()),
        ("layers".to_string(), keys.join(",")),
        ("overlay".to_string(), overlay.to_string()),
    ]);
    let params = crate::VolumeParams::parse(&p, None).unwrap();
    let rec = f
        .mgr
        .create(&crate::CreateRequest::new("img", 8 << 20, 0, params))
        .unwrap();
    (f, rec, keys)
}

#[test]
fn image_publish_mounts_an_overlay_with_a_writable_layer_per_target() {
    let (f, rec, keys) = image_fixture("kernel");
    assert_eq!(rec.kind, crate::model::VolumeKind::Image);
    let dir = f.mgr.pool().volume_dir(&rec.id);
    assert_eq!(
        f.fake.limit_of(&dir),
        Some(8 << 20),
        "quota on the writable layers"
    );
    let staging = f.dir.path().join("staging");
    let target = f.dir.path().join("target");
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    let publish = |read_only| PublishOptions {
        read_only,
        ..Default::default()
    };
    f.mgr
        .publish(&rec.id, &staging, &target, &publish(false))
        .unwrap();
    let pub_dir = f.mgr.publication_dir(&rec.id, &target);
    assert!(pub_dir.starts_with(&dir));
    assert!(pub_dir.join("upper").is_dir() && pub_dir.join("work").is_dir());
    let layers = f.dir.path().join("layers");
    let expected = format!(
        "mount overlay {} overlay lowerdir={}:{},upperdir={},workdir={}",
        target.display(),
        layers.join(&keys[1]).display(),
        layers.join(&keys[0]).display(),
        pub_dir.join("upper").display(),
        pub_dir.join("work").display()
    );
    let calls = f.fake.calls();
    assert!(calls.contains(&expected), "top layer first: {calls:#?}");
    // Idempotent.
    f.mgr
        .publish(&rec.id, &staging, &target, &publish(false))
        .unwrap();
    assert_eq!(
        f.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("mount overlay"))
            .count(),
        1
    );
    // Unpublish keeps the writable layer; another target gets a layer of its own.
    std::fs::write(pub_dir.join("upper/kept"), b"x").unwrap();
    f.mgr.unpublish(&rec.id, &target).unwrap();
    assert!(pub_dir.join("upper/kept").exists());
    let other = f.dir.path().join("other");
    f.mgr
        .publish(&rec.id, &staging, &other, &publish(true))
        .unwrap();
    assert_ne!(f.mgr.publication_dir(&rec.id, &other), pub_dir);
    let entry = crate::os::mount::Mounter::mount_at(&*f.fake, &other)
        .unwrap()
        .unwrap();
    assert!(entry.read_only());
}

#[test]
fn image_publish_of_a_missing_layer_or_a_failed_mount_leaves_nothing() {
    let (f, rec, keys) = image_fixture("kernel");
    let staging = f.dir.path().join("staging");
    let target = f.dir.path().join("target");
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    f.fake.fail_next("mount", libc::EINVAL);
    assert!(
        f.mgr
            .publish(&rec.id, &staging, &target, &PublishOptions::default())
            .is_err()
    );
    assert!(!target.exists());
    assert!(f.mgr.get(&rec.id).unwrap().publications.is_empty());
    std::fs::remove_dir(f.dir.path().join("layers").join(&keys[0])).unwrap();
    let err = f
        .mgr
        .publish(&rec.id, &staging, &target, &PublishOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::FailedPrecondition(ref m) if m.contains(&keys[0])),
        "{err}"
    );
    assert!(!target.exists());
    // Block access is refused for an overlay.
    f.mgr.unstage(&rec.id, &staging).unwrap();
    let block = StageOptions {
        block: true,
        ..Default::default()
    };
    assert!(matches!(
        f.mgr.stage(&rec.id, &staging, &block),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn image_publish_with_fuse_runs_the_overlay_program() {
    let (f, rec, _) = image_fixture("fuse");
    let staging = f.dir.path().join("staging");
    let target = f.dir.path().join("target");
    f.mgr
        .stage(&rec.id, &staging, &StageOptions::default())
        .unwrap();
    let opts = PublishOptions {
        read_only: true,
        ..Default::default()
    };
    f.mgr.publish(&rec.id, &staging, &target, &opts).unwrap();
    let program = f.dir.path().join("stowage-overlay");
    let calls = f.fake.calls();
    let call = calls
        .iter()
        .find(|c| c.starts_with("mount_fuse_overlay"))
        .expect("overlay program run");
    assert!(call.starts_with(&format!(
        "mount_fuse_overlay {} lowerdir=",
        program.display()
    )));
    assert!(
        call.ends_with(&format!("{} true", target.display())),
        "{call}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("mount overlay")));
}

#[test]
fn image_create_is_idempotent_only_for_the_same_layers() {
    let (f, rec, keys) = image_fixture("kernel");
    let same = std::collections::HashMap::from([
        ("kind".to_string(), "image".to_string()),
        ("layers".to_string(), keys.join(",")),
    ]);
    let again = f
        .mgr
        .create(&crate::CreateRequest::new(
            "img",
            8 << 20,
            0,
            crate::VolumeParams::parse(&same, None).unwrap(),
        ))
        .unwrap();
    assert_eq!(again.id, rec.id);
    let other = std::collections::HashMap::from([
        ("kind".to_string(), "image".to_string()),
        ("layers".to_string(), keys[0].clone()),
    ]);
    assert!(matches!(
        f.mgr.create(&crate::CreateRequest::new(
            "img",
            8 << 20,
            0,
            crate::VolumeParams::parse(&other, None).unwrap(),
        )),
        Err(Error::NameConflict { .. })
    ));
}
