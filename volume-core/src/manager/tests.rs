use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::os::fake::FakeHost;
use crate::pool::PoolConfig;

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub fake: Arc<FakeHost>,
    pub mgr: VolumeManager,
}

pub(crate) fn fixture(btrfs: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let config = if btrfs {
        PoolConfig::Btrfs { path }
    } else {
        PoolConfig::Dir { path }
    };
    std::fs::create_dir_all(dir.path().join("pool")).unwrap();
    fixture_with(dir, FakeHost::new(btrfs), &config)
}

/// A manager over an embedded pool (fake btrfs) with loop images of `loop_layout`
/// in `<tmp>/images`.
pub(crate) fn embedded_fixture(loop_layout: crate::model::Layout) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = PoolConfig::Embedded {
        image: dir.path().join("pool.img"),
        mount: dir.path().join("pool"),
        size: 1 << 30,
        images: dir.path().join("images"),
        loop_layout,
    };
    fixture_with(dir, FakeHost::new(true), &config)
}

/// A manager in `dir` over the pool `config` names, on `fake`.
fn fixture_with(dir: tempfile::TempDir, fake: Arc<FakeHost>, config: &PoolConfig) -> Fixture {
    let pool = Pool::open(config, fake.host()).unwrap();
    let store = Store::open(&dir.path().join("meta.redb")).unwrap();
    let node = NodeIdentity {
        node_id: "node-1".into(),
        state_dir: dir.path().join("state"),
        ephemeral_dir: dir.path().join("ephemeral"),
        attach_dir: dir.path().join("attach"),
        layers_dir: dir.path().join("layers"),
        overlay_program: dir.path().join("stowage-overlay"),
    };
    let mgr = VolumeManager::new(store, pool, fake.host(), node);
    Fixture { dir, fake, mgr }
}

pub(crate) fn req(name: &str, kind: &str, bytes: u64) -> CreateRequest {
    let mut p = HashMap::new();
    p.insert("kind".to_string(), kind.to_string());
    CreateRequest::new(name, bytes, 0, VolumeParams::parse(&p, None).unwrap())
}

#[test]
fn replicated_create_needs_its_replica_nodes() {
    let f = fixture(true);
    let mut p = HashMap::new();
    p.insert("replicas".to_string(), "3".to_string());
    let params = VolumeParams::parse(&p, None).unwrap();
    let mut r = CreateRequest::new("rep", 1 << 20, 0, params);
    assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
    r.replica_nodes = vec!["b".into()];
    assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
    r.replica_nodes.push("c".into());
    let rec = f.mgr.create(&r).unwrap();
    let spec = rec.replication.unwrap();
    assert_eq!((spec.copies, spec.nodes.len()), (3, 2));
    assert_eq!(rec.generation, 1);
}

#[test]
fn create_dir_volume_on_btrfs_sets_qgroup_limit() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("a", "dir", 5 << 20)).unwrap();
    assert!(is_valid_id(&rec.id));
    assert!(rec.capacity_enforced);
    let dir = f.mgr.pool().volume_dir(&rec.id);
    assert_eq!(f.fake.limit_of(&dir), Some(5 << 20));
    assert_eq!(f.mgr.get(&rec.id).unwrap().state, VolumeState::Ready);
}

#[test]
fn dir_volume_on_plain_pool_is_not_enforced() {
    let f = fixture(false);
    let rec = f.mgr.create(&req("a", "dir", 5 << 20)).unwrap();
    assert!(!rec.capacity_enforced);
    assert!(f.fake.calls().iter().all(|c| !c.starts_with("set_limit")));
}

#[test]
fn create_is_idempotent_by_name_and_conflicts_on_different_size() {
    let f = fixture(true);
    let a = f.mgr.create(&req("same", "dir", 5 << 20)).unwrap();
    let b = f.mgr.create(&req("same", "dir", 5 << 20)).unwrap();
    assert_eq!(a.id, b.id);
    assert!(matches!(
        f.mgr.create(&req("same", "dir", 50 << 20)),
        Err(Error::NameConflict { .. })
    ));
    assert!(matches!(
        f.mgr.create(&req("same", "loop", 5 << 20)),
        Err(Error::NameConflict { .. })
    ));
}

#[test]
fn failed_format_leaves_no_record_and_no_directory() {
    // A plain pool: no cleaner to wait for, so the failure stands.
    let f = fixture(false);
    f.fake.fail_next("format", libc::ENOSPC);
    let err = f.mgr.create(&req("x", "loop", 64 << 20)).unwrap_err();
    assert!(err.is_no_space(), "{err:?}");
    assert!(f.mgr.store.list::<VolumeRecord>().unwrap().is_empty());
    let vols = f.dir.path().join("pool/volumes");
    assert_eq!(std::fs::read_dir(vols).unwrap().count(), 0);
}

#[test]
fn out_of_space_on_btrfs_waits_for_the_cleaner_and_tries_again() {
    let f = fixture(true);
    f.fake.fail_next("format", libc::ENOSPC);
    let rec = f.mgr.create(&req("x", "loop", 64 << 20)).unwrap();
    let calls = f.fake.calls();
    let wait = calls.iter().position(|c| c.starts_with("wait_for_cleaner"));
    let formats: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("format "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(formats.len(), 2, "{calls:?}");
    assert!(
        wait.is_some_and(|w| formats[0] < w && w < formats[1]),
        "{calls:?}"
    );
    assert_eq!(f.mgr.get(&rec.id).unwrap().state, VolumeState::Ready);
}

#[test]
fn capacity_beyond_pool_free_space_is_no_space_and_leaves_nothing() {
    let f = fixture(true);
    let err = f.mgr.create(&req("huge", "dir", 1 << 60)).unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)));
    // Before giving up, btrfs's cleaner was waited for (deleted subvolumes' space).
    let waits = f
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("wait_for_cleaner"))
        .count();
    assert!(waits >= 1, "{:?}", f.fake.calls());
    assert!(f.mgr.store.list::<VolumeRecord>().unwrap().is_empty());
    assert!(
        !f.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("create_subvolume"))
    );
}

#[test]
fn capacity_rules() {
    let f = fixture(true);
    let mut r = req("c", "loop", 0);
    r.params = VolumeParams::parse(
        &[
            ("kind".to_string(), "loop".to_string()),
            ("fsType".to_string(), "xfs".to_string()),
        ]
        .into_iter()
        .collect(),
        None,
    )
    .unwrap();
    r.required_bytes = 1 << 20;
    assert_eq!(f.mgr.choose_capacity(&r).unwrap(), 300 << 20);
    r.limit_bytes = 100 << 20;
    assert!(matches!(
        f.mgr.choose_capacity(&r),
        Err(Error::OutOfRange(_))
    ));
    r.required_bytes = 200 << 20;
    assert!(matches!(
        f.mgr.choose_capacity(&r),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        f.mgr.choose_capacity(&req("d", "dir", 0)).unwrap(),
        DEFAULT_CAPACITY
    );
    assert_eq!(f.mgr.choose_capacity(&req("d", "dir", 1)).unwrap(), 1 << 20);
}

#[test]
fn delete_is_idempotent_and_refuses_staged_volumes() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
    f.mgr.delete(&rec.id).unwrap();
    f.mgr.delete(&rec.id).unwrap();
    f.mgr.delete("v-00000000000000000000000000000000").unwrap();
    f.mgr.delete("../../etc").unwrap();
    assert!(matches!(f.mgr.get(&rec.id), Err(Error::VolumeNotFound(_))));

    let rec = f.mgr.create(&req("e", "dir", 1 << 20)).unwrap();
    let staging = f.dir.path().join("staging");
    f.mgr.stage(&rec.id, &staging, &Default::default()).unwrap();
    assert!(matches!(
        f.mgr.delete(&rec.id),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn ids_that_could_escape_are_not_found() {
    let f = fixture(true);
    for bad in [
        "../x",
        "v-../../etc",
        "/etc",
        "",
        "v-ABCDEF00000000000000000000000000",
    ] {
        assert!(!is_valid_id(bad));
        assert!(matches!(f.mgr.get(bad), Err(Error::VolumeNotFound(_))));
    }
}

#[test]
fn names_are_validated() {
    assert!(validate_name("pvc-1234").is_ok());
    assert!(validate_name(&"x".repeat(128)).is_ok());
    assert!(validate_name(&"x".repeat(129)).is_err());
    assert!(validate_name("a/b").is_err());
    assert!(validate_name("..").is_err());
    assert!(validate_name("").is_err());
    assert!(validate_name("a\nb").is_err());
    // Nothing visible, or text that shows as something else.
    for bad in [
        "   ",
        "\u{202E}",
        "\u{200B}\u{200B}",
        " \u{FEFF} ",
        "abc\u{202E}gpj.exe",
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    assert!(validate_name("données été").is_ok());
    assert!(validate_name("a b").is_ok());
}

#[test]
fn list_pages_by_id() {
    let f = fixture(true);
    for i in 0..5 {
        f.mgr
            .create(&req(&format!("n{i}"), "dir", 1 << 20))
            .unwrap();
    }
    let first = f.mgr.list(None, 2).unwrap();
    assert_eq!(first.len(), 2);
    let rest = f.mgr.list(Some(&first[1].id), 10).unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|r| r.id > first[1].id));
}

#[test]
fn concurrent_operation_on_same_volume_is_busy() {
    let f = fixture(true);
    let rec = f.mgr.create(&req("busy", "dir", 1 << 20)).unwrap();
    let _held = f.mgr.claim(&rec.id).unwrap();
    assert!(matches!(f.mgr.delete(&rec.id), Err(Error::Busy(_))));
}
