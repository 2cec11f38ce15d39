//! Regression tests: a caller's staging and target paths never redirect a mount, and
//! unstage/unpublish undo only the volume's own mounts.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::manager::node::{PublishOptions, StageOptions};
use crate::manager::tests::{Fixture, fixture, req};
use crate::os::mount::Mounter;

fn stage(f: &Fixture, id: &str, path: &Path) -> crate::Result<()> {
    f.mgr.stage(id, path, &StageOptions::default())
}

fn staged_at(f: &Fixture, id: &str) -> Option<PathBuf> {
    f.mgr.get(id).unwrap().staging.map(|s| s.path)
}

#[test]
fn a_link_in_a_staging_path_is_refused_and_nothing_is_mounted_where_it_points() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let victim = f.dir.path().join("etc");
    std::fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, f.dir.path().join("link")).unwrap();
    for path in ["link", "link/sub"] {
        let err = stage(&f, &v.id, &f.dir.path().join(path)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{path}: {err}");
    }
    assert!(f.fake.mounted().is_empty());
    assert_eq!(staged_at(&f, &v.id), None);
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
}

#[test]
fn dot_components_are_refused_and_paths_are_kept_canonical() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let base = f.dir.path().display().to_string();
    for bad in [format!("{base}/a/../s"), format!("{base}/./s"), "s".into()] {
        let err = stage(&f, &v.id, Path::new(&bad)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
    }
    stage(&f, &v.id, Path::new(&format!("{base}//s/"))).unwrap();
    let canonical = f.dir.path().join("s");
    assert_eq!(staged_at(&f, &v.id), Some(canonical.clone()));
    // The same place written differently is the same staging.
    stage(&f, &v.id, &canonical).unwrap();
    assert_eq!(f.fake.mounted(), vec![canonical]);
}

#[test]
fn targets_inside_the_daemons_places_or_on_a_staging_are_refused() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let other = f.mgr.create(&req("o", "dir", 1 << 20)).unwrap();
    let staging = f.dir.path().join("s");
    let other_staging = f.dir.path().join("o");
    stage(&f, &v.id, &staging).unwrap();
    stage(&f, &other.id, &other_staging).unwrap();
    let rw = PublishOptions::default();
    let pool = f.mgr.pool.root().to_path_buf();
    for target in [
        staging.clone(),
        pool.join("volumes/x"),
        f.dir.path().join("state/anything"),
        other_staging.clone(),
        f.dir.path().to_path_buf(),
    ] {
        let err = f.mgr.publish(&v.id, &staging, &target, &rw).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{}: {err}",
            target.display()
        );
    }
    // Staging inside the pool, or over another volume's staging, likewise.
    let third = f.mgr.create(&req("t", "dir", 1 << 20)).unwrap();
    for path in [pool.join("snapshots"), other_staging.clone()] {
        let err = stage(&f, &third.id, &path).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
    assert_eq!(f.fake.mounted(), vec![staging, other_staging]);
}

#[test]
fn unstage_at_another_path_keeps_the_staging_and_touches_nothing_there() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "loop", 64 << 20)).unwrap();
    let staging = f.dir.path().join("s");
    stage(&f, &v.id, &staging).unwrap();
    let elsewhere = f.dir.path().join("tmpfs");
    std::fs::create_dir(&elsewhere).unwrap();
    f.fake.mount_foreign("tmpfs", &elsewhere);
    let err = f.mgr.unstage(&v.id, &elsewhere).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(staged_at(&f, &v.id), Some(staging.clone()));
    assert_eq!(f.fake.mounted(), vec![staging.clone(), elsewhere.clone()]);
    assert_eq!(f.fake.attached().len(), 1, "loop device kept");
    // A volume staged nowhere has nothing to undo anywhere: OK, nothing touched.
    let w = f.mgr.create(&req("w", "dir", 1 << 20)).unwrap();
    f.mgr.unstage(&w.id, &elsewhere).unwrap();
    f.mgr.unstage(&w.id, &staging).unwrap();
    assert_eq!(f.fake.mounted(), vec![staging.clone(), elsewhere]);
    // So DeleteVolume still sees the volume in use.
    assert!(matches!(
        f.mgr.delete(&v.id).unwrap_err(),
        Error::FailedPrecondition(_)
    ));
}

#[test]
fn a_mount_over_the_staging_or_target_is_not_unmounted_for_the_volume() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let staging = f.dir.path().join("s");
    let target = f.dir.path().join("t");
    stage(&f, &v.id, &staging).unwrap();
    f.mgr
        .publish(&v.id, &staging, &target, &PublishOptions::default())
        .unwrap();
    f.fake.mount_foreign("other", &target);
    let err = f.mgr.unpublish(&v.id, &target).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(f.mgr.get(&v.id).unwrap().publications.len(), 1);
    f.fake.unmount(&target).unwrap();
    f.mgr.unpublish(&v.id, &target).unwrap();
    assert!(!target.exists());

    f.fake.mount_foreign("other", &staging);
    let err = f.mgr.unstage(&v.id, &staging).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(f.fake.mounted(), vec![staging.clone(), staging.clone()]);
    assert_eq!(staged_at(&f, &v.id), Some(staging.clone()));
    // Re-staging does not stack a mount on the foreign one either.
    assert!(matches!(
        stage(&f, &v.id, &staging).unwrap_err(),
        Error::FailedPrecondition(_)
    ));
}

#[test]
fn unpublish_of_a_target_the_volume_is_not_published_at_touches_nothing() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let w = f.mgr.create(&req("w", "dir", 1 << 20)).unwrap();
    let (sv, sw) = (f.dir.path().join("sv"), f.dir.path().join("sw"));
    stage(&f, &v.id, &sv).unwrap();
    stage(&f, &w.id, &sw).unwrap();
    let tw = f.dir.path().join("tw");
    f.mgr
        .publish(&w.id, &sw, &tw, &PublishOptions::default())
        .unwrap();
    // v names w's target and w's staging: neither is v's.
    f.mgr.unpublish(&v.id, &tw).unwrap();
    f.mgr.unpublish(&v.id, &sw).unwrap();
    assert_eq!(f.fake.mounted(), vec![sv, sw, tw.clone()]);
    assert!(tw.is_dir());
    assert_eq!(f.mgr.get(&w.id).unwrap().publications.len(), 1);
}

#[test]
fn a_staging_the_plugin_holds_is_not_unstaged_through_csi() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let root = f.dir.path().join("plugin");
    let path = f.mgr.plugin_mount(&v.id, "container-1", &root).unwrap();
    let err = f.mgr.unstage(&v.id, &path).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(f.fake.mounted(), vec![path.clone()]);
    f.mgr.plugin_unmount(&v.id, "container-1", &root).unwrap();
    assert!(f.fake.mounted().is_empty());
}

#[test]
fn a_staging_directory_the_daemon_made_goes_at_unstage_one_it_found_stays() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let made = f.dir.path().join("dev/name");
    stage(&f, &v.id, &made).unwrap();
    f.mgr.unstage(&v.id, &made).unwrap();
    assert!(!made.exists());
    let found = f.dir.path().join("found");
    std::fs::create_dir(&found).unwrap();
    stage(&f, &v.id, &found).unwrap();
    f.mgr.unstage(&v.id, &found).unwrap();
    assert!(found.is_dir());
}

#[test]
fn a_mount_of_the_volume_no_record_names_is_still_undone_and_publish_needs_the_staging() {
    let f = fixture(true);
    let v = f.mgr.create(&req("v", "dir", 1 << 20)).unwrap();
    let staging = f.dir.path().join("s");
    let target = f.dir.path().join("t");
    stage(&f, &v.id, &staging).unwrap();
    f.mgr
        .publish(&v.id, &staging, &target, &PublishOptions::default())
        .unwrap();
    // The records forget both mounts (as after a rebuild of the metadata).
    let mut rec = f.mgr.get(&v.id).unwrap();
    rec.staging = None;
    rec.publications.clear();
    f.mgr.store.put(&rec).unwrap();
    f.mgr.unpublish(&v.id, &target).unwrap();
    f.mgr.unstage(&v.id, &staging).unwrap();
    assert!(f.fake.mounted().is_empty());
    assert!(!target.exists());

    // A staging whose mount went away is not published (the pod would get the
    // node's own directory).
    stage(&f, &v.id, &staging).unwrap();
    f.fake.unmount(&staging).unwrap();
    let err = f
        .mgr
        .publish(&v.id, &staging, &target, &PublishOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert!(f.fake.mounted().is_empty());
}
