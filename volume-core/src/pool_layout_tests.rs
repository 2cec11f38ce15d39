//! Layouts: where each new volume's data goes and how it is found again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use crate::error::Error;
use crate::manager::tests::{embedded_fixture, fixture, req};
use crate::model::{ContentSource, Layout, VolumeKind, VolumeRecord};
use crate::pool::{IMAGE_FILE, SNAPSHOTS_DIR, VOLUMES_DIR};

#[test]
fn dir_volumes_on_btrfs_are_nodatacow_unless_created_compressed() {
    let f = fixture(true);
    let plain = f.mgr.create(&req("fast", "dir", 8 << 20)).unwrap();
    assert_eq!(plain.layout, Some(Layout::BtrfsNocow));
    let dir = std::fs::File::open(f.mgr.pool().volume_dir(&plain.id)).unwrap();
    assert!(f.fake.host().btrfs.is_nocow(&dir).unwrap());

    let mut r = req("squeezed", "dir", 8 << 20);
    r.mutable_parameters = BTreeMap::from([("compression".into(), "zstd".into())]);
    let squeezed = f.mgr.create(&r).unwrap();
    assert_eq!(squeezed.layout, Some(Layout::BtrfsSubvolume));
    let dir = std::fs::File::open(f.mgr.pool().volume_dir(&squeezed.id)).unwrap();
    assert!(!f.fake.host().btrfs.is_nocow(&dir).unwrap());

    // Compression set later makes new files copy-on-write: the layout says so.
    let params = BTreeMap::from([("compression".to_string(), "zstd".to_string())]);
    let modified = f.mgr.modify(&plain.id, &params).unwrap();
    assert_eq!(modified.layout, Some(Layout::BtrfsSubvolume));

    // A clone keeps what its origin hands new files.
    let fresh = f.mgr.create(&req("fresh", "dir", 8 << 20)).unwrap();
    let mut c = req("fresh-clone", "dir", 8 << 20);
    c.source = Some(ContentSource::Volume(fresh.id.clone()));
    assert_eq!(f.mgr.create(&c).unwrap().layout, Some(Layout::BtrfsNocow));
}

#[test]
fn dir_volumes_on_a_plain_pool_say_their_size_is_not_enforced() {
    let f = fixture(false);
    let rec = f.mgr.create(&req("d", "dir", 8 << 20)).unwrap();
    assert_eq!(rec.layout, Some(Layout::Directory));
    assert!(!rec.capacity_enforced);
}

#[test]
fn loop_images_live_preallocated_on_the_host_filesystem_with_their_snapshots_and_clones() {
    let f = embedded_fixture(Layout::HostImage);
    let images = f.dir.path().join("images");
    let rec = f.mgr.create(&req("db", "loop", 16 << 20)).unwrap();
    assert_eq!(rec.layout, Some(Layout::HostImage));
    let image = images.join(VOLUMES_DIR).join(&rec.id).join(IMAGE_FILE);
    assert_eq!(f.mgr.pool().image_path(&rec.id), image);
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 16 << 20);
    assert!(meta.blocks() * 512 >= 16 << 20, "preallocated, not sparse");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(!f.mgr.pool().root().join(VOLUMES_DIR).join(&rec.id).exists());

    let snap = f.mgr.create_snapshot("db-snap", &rec.id).unwrap();
    let snap_dir = images.join(SNAPSHOTS_DIR).join(&snap.id);
    assert_eq!(f.mgr.pool().snapshot_dir(&snap.id), snap_dir);
    assert!(snap_dir.join(IMAGE_FILE).exists());

    let mut r = req("db-restored", "loop", 32 << 20);
    r.source = Some(ContentSource::Snapshot(snap.id.clone()));
    let restored = f.mgr.create(&r).unwrap();
    assert_eq!(restored.layout, Some(Layout::HostImage));
    let restored_image = f.mgr.pool().image_path(&restored.id);
    assert!(restored_image.starts_with(&images));
    assert!(std::fs::metadata(&restored_image).unwrap().blocks() * 512 >= 32 << 20);

    f.mgr.delete(&restored.id).unwrap();
    assert!(!restored_image.exists());
    f.mgr.delete_snapshot(&snap.id).unwrap();
    assert!(!snap_dir.exists());
}

#[test]
fn replicated_loop_volumes_stay_in_the_pool_and_host_images_replicate_later() {
    let f = embedded_fixture(Layout::HostImage);
    let mut p = std::collections::HashMap::new();
    p.insert("kind".to_string(), "loop".to_string());
    p.insert("replicas".to_string(), "2".to_string());
    let mut r = crate::manager::CreateRequest::new(
        "rep",
        16 << 20,
        0,
        crate::params::VolumeParams::parse(&p, None).unwrap(),
    );
    r.replica_nodes = vec!["node-2".into()];
    let rec = f.mgr.create(&r).unwrap();
    assert_eq!(rec.layout, Some(Layout::PoolImage));
    assert!(
        f.mgr
            .pool()
            .image_path(&rec.id)
            .starts_with(f.mgr.pool().root())
    );

    let host = f.mgr.create(&req("local", "loop", 16 << 20)).unwrap();
    let params = BTreeMap::from([("replicas".to_string(), "2".to_string())]);
    let raised = f
        .mgr
        .modify_placed(&host.id, &params, &["node-2".to_string()])
        .unwrap();
    assert_eq!(raised.layout, Some(Layout::HostImage));
    assert_eq!(
        f.mgr.stream_format_of(&raised),
        crate::replication::StreamFormat::Chunk
    );

    // A replicated clone of a host image is copied into a pool subvolume.
    let mut c = r.clone();
    c.name = "rep-clone".into();
    c.source = Some(ContentSource::Volume(host.id.clone()));
    let clone = f.mgr.create(&c).unwrap();
    assert_eq!(clone.layout, Some(Layout::PoolImage));
    assert!(
        f.mgr
            .pool()
            .image_path(&clone.id)
            .starts_with(f.mgr.pool().root())
    );
}

#[test]
fn loop_images_in_the_pool_when_asked_and_volumes_made_before_layouts_are_found() {
    let f = embedded_fixture(Layout::PoolImage);
    let rec = f.mgr.create(&req("inpool", "loop", 16 << 20)).unwrap();
    assert_eq!(rec.layout, Some(Layout::PoolImage));
    assert!(
        f.mgr
            .pool()
            .image_path(&rec.id)
            .starts_with(f.mgr.pool().root())
    );

    // A record of an earlier release has no layout: what that release made.
    let mut old: VolumeRecord = f.mgr.get(&rec.id).unwrap();
    old.layout = None;
    assert_eq!(f.mgr.layout_of(&old), Layout::PoolImage);
    old.kind = VolumeKind::Dir;
    assert_eq!(f.mgr.layout_of(&old), Layout::BtrfsSubvolume);
}

#[test]
fn a_host_image_larger_than_the_host_has_free_is_no_space_and_leaves_nothing() {
    let f = embedded_fixture(Layout::HostImage);
    let err = f.mgr.create(&req("huge", "loop", 1 << 60)).unwrap_err();
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    let images = f.dir.path().join("images").join(VOLUMES_DIR);
    assert_eq!(std::fs::read_dir(images).unwrap().count(), 0);
    assert!(f.mgr.list(None, 0).unwrap().is_empty());
}

#[test]
fn a_layout_asked_for_must_fit_the_kind_and_the_pool() {
    let with = |kind: &str, layout: &str| {
        let p = std::collections::HashMap::from([
            ("kind".to_string(), kind.to_string()),
            ("layout".to_string(), layout.to_string()),
        ]);
        crate::params::VolumeParams::parse(&p, None)
    };
    assert!(matches!(
        with("dir", "host-image"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        with("loop", "btrfs-nocow"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        with("loop", "fast"),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        with("loop", "pool-image").unwrap().layout,
        Some(Layout::PoolImage)
    );

    // A btrfs pool that is not embedded has no host-image directory.
    let f = fixture(true);
    let mut r = req("x", "loop", 16 << 20);
    r.params = with("loop", "host-image").unwrap();
    assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
    let mut r = req("y", "dir", 16 << 20);
    r.params = with("dir", "btrfs-nocow").unwrap();
    r.mutable_parameters = BTreeMap::from([("compression".into(), "zstd".into())]);
    assert!(matches!(f.mgr.create(&r), Err(Error::InvalidArgument(_))));
    assert!(f.mgr.list(None, 0).unwrap().is_empty(), "nothing made");

    // Asked for, a copy-on-write directory on btrfs.
    let mut r = req("z", "dir", 16 << 20);
    r.params = with("dir", "btrfs-subvolume").unwrap();
    assert_eq!(
        f.mgr.create(&r).unwrap().layout,
        Some(Layout::BtrfsSubvolume)
    );
    // On a plain pool, only a plain directory.
    let g = fixture(false);
    let mut r = req("w", "dir", 16 << 20);
    r.params = with("dir", "btrfs-nocow").unwrap();
    assert!(matches!(g.mgr.create(&r), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_compressed_clone_says_copy_on_write_and_a_repeated_create_must_ask_the_same_layout() {
    let f = fixture(true);
    let src = f.mgr.create(&req("src", "dir", 8 << 20)).unwrap();
    let mut c = req("squeezed-clone", "dir", 8 << 20);
    c.source = Some(ContentSource::Volume(src.id.clone()));
    c.mutable_parameters = BTreeMap::from([("compression".into(), "zstd".into())]);
    let clone = f.mgr.create(&c).unwrap();
    assert_eq!(clone.layout, Some(Layout::BtrfsSubvolume));
    let dir = std::fs::File::open(f.mgr.pool().volume_dir(&clone.id)).unwrap();
    assert!(!f.fake.host().btrfs.is_nocow(&dir).unwrap());

    // Asked for on a clone, a layout changes what the clone's new files get.
    let mut cow = req("cow-clone", "dir", 8 << 20);
    cow.source = Some(ContentSource::Volume(src.id.clone()));
    cow.params.layout = Some(Layout::BtrfsSubvolume);
    assert_eq!(
        f.mgr.create(&cow).unwrap().layout,
        Some(Layout::BtrfsSubvolume)
    );

    let mut again = req("src", "dir", 8 << 20);
    again.params.layout = Some(Layout::BtrfsSubvolume);
    assert!(matches!(
        f.mgr.create(&again),
        Err(Error::NameConflict { .. })
    ));
    again.params.layout = Some(Layout::BtrfsNocow);
    assert_eq!(f.mgr.create(&again).unwrap().id, src.id);
}

#[test]
fn a_raw_block_host_image_in_use_is_not_copied_where_the_host_cannot_reflink() {
    // The fake host never reflinks.
    let f = embedded_fixture(Layout::HostImage);
    assert!(!f.mgr.pool().host_reflinks());
    let rec = f.mgr.create(&req("raw", "loop", 16 << 20)).unwrap();
    let mut staged = f.mgr.get(&rec.id).unwrap();
    staged.staging = Some(crate::model::StageRecord {
        path: f.dir.path().join("staging"),
        loop_device: None,
        mount_flags: Vec::new(),
        block: true,
        created_dir: false,
    });
    f.mgr.store.put(&staged).unwrap();
    let err = f.mgr.create_snapshot("torn", &rec.id).unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let mut c = req("raw-clone", "loop", 16 << 20);
    c.source = Some(ContentSource::Volume(rec.id.clone()));
    assert!(matches!(
        f.mgr.create(&c),
        Err(Error::FailedPrecondition(_))
    ));
    let snapshots = f.dir.path().join("images").join(SNAPSHOTS_DIR);
    assert_eq!(std::fs::read_dir(snapshots).unwrap().count(), 0);

    // Unstaged, it is copied.
    staged.staging = None;
    f.mgr.store.put(&staged).unwrap();
    f.mgr.create_snapshot("whole", &rec.id).unwrap();
}

#[test]
fn host_images_leave_the_host_its_reserve() {
    let f = embedded_fixture(Layout::HostImage);
    // Other processes write to the same filesystem (a build, other tests): the free
    // space is read before and after, and the answer must lie between.
    let free = || {
        let st = nix::sys::statvfs::statvfs(f.dir.path()).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let before = free();
    let usage = f.mgr.pool().host_usage().unwrap().unwrap();
    let after = free();
    let (low, high) = (before.min(after), before.max(after));
    assert!(
        usage.available <= high.saturating_sub(crate::pool::HOST_RESERVE),
        "{usage:?} of {low}..{high}"
    );
    assert!(
        usage.available + crate::pool::HOST_RESERVE >= low / 2,
        "{usage:?} of {low}..{high}"
    );
}

#[test]
fn a_btrfs_pool_without_host_images_refuses_chunk_diffs_of_loop_volumes() {
    let f = std::sync::Arc::new(fixture(true).mgr);
    let header = crate::replication::IncomingHeader {
        volume_id: "v-0123456789abcdef0123456789abcdef".into(),
        name: "rep".into(),
        kind: VolumeKind::Loop,
        fs: None,
        capacity: 4 << 20,
        snapshot: "1-g1".into(),
        parent: None,
        source_node_id: "a".into(),
        generation: 1,
        taken_at: 0,
        spec: None,
        format: crate::replication::StreamFormat::Chunk,
    };
    assert!(matches!(
        f.begin_receive(header),
        Err(Error::FailedPrecondition(_))
    ));
}
