//! Creating, copying, deleting, growing, modifying and snapshotting volumes; busy ones.

use super::*;

#[tokio::test]
async fn create_makes_a_volume_and_is_idempotent_by_name() {
    let f = fixture();
    let a = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 8 << 20))
        .await
        .unwrap();
    assert_eq!((a.kind, a.capacity), (VolumeKind::Dir, 8 << 20));
    let again = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 8 << 20))
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    let other = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "dir", 16 << 20))
        .await
        .unwrap_err();
    assert_eq!(code(other), Code::AlreadyExists);
}

#[tokio::test]
async fn create_refuses_bad_parameters_and_unknown_layers_as_invalid() {
    let f = fixture();
    let bad = f
        .volumes
        .create(Caller::Orchestrator, new_volume("a", "floppy", 1 << 20))
        .await
        .unwrap_err();
    assert_eq!(code(bad), Code::InvalidArgument);
    let mut image = new_volume("img", "image", 1 << 20);
    image.parameters.insert(
        volume_core::params::LAYERS.into(),
        "sha256:".to_string() + &"ab".repeat(32),
    );
    let missing = f
        .volumes
        .create(Caller::Orchestrator, image)
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, Error::InvalidArgument(m) if m.contains("not in the layer store")),
        "{missing:?}"
    );
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn replication_in_mutable_parameters_places_copies_and_without_peers_is_exhausted() {
    let f = fixture();
    let mut v = new_volume("rep", "dir", 1 << 20);
    v.mutable_parameters
        .insert(volume_core::params::REPLICAS.into(), "2".into());
    let e = f.volumes.create(Caller::Orchestrator, v).await.unwrap_err();
    assert!(matches!(e, Error::Peer(_)), "{e:?}");
    assert_eq!(code(e), Code::ResourceExhausted);
    assert!(
        f.volumes
            .driver()
            .manager
            .list(None, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn create_from_a_snapshot_and_copy_of_a_volume() {
    let f = fixture();
    let src = made(&f, "src", "dir", 4 << 20).await;
    let snap = f
        .volumes
        .snapshot(Caller::Person, "src", "s1")
        .await
        .unwrap();
    assert_eq!(snap.source_volume_id, src.id);
    let mut restored = new_volume("restored", "dir", 4 << 20);
    restored.source = Some(ContentSource::Snapshot(snap.id.clone()));
    let restored = f
        .volumes
        .create(Caller::Orchestrator, restored)
        .await
        .unwrap();
    assert_eq!(restored.capacity, 4 << 20);
    // A copy takes its source's kind and size; a smaller size cannot hold it.
    let copy = f
        .volumes
        .create_copy(Caller::Person, "copy", CopyOf::Volume("src".into()), 0)
        .await
        .unwrap();
    assert_eq!((copy.kind, copy.capacity), (VolumeKind::Dir, 4 << 20));
    let small = f
        .volumes
        .create_copy(
            Caller::Person,
            "small",
            CopyOf::Snapshot("s1".into()),
            1 << 20,
        )
        .await
        .unwrap_err();
    assert_eq!(code(small), Code::OutOfRange);
}

#[tokio::test]
async fn a_person_names_volumes_an_orchestrator_gives_ids() {
    let f = fixture();
    let a = made(&f, "a", "dir", 1 << 20).await;
    assert_eq!(f.volumes.get(Caller::Person, "a").await.unwrap().id, a.id);
    assert_eq!(
        f.volumes.get(Caller::Orchestrator, &a.id).await.unwrap().id,
        a.id
    );
    let by_name = f.volumes.get(Caller::Orchestrator, "a").await.unwrap_err();
    assert_eq!(code(by_name), Code::NotFound);
}

#[tokio::test]
async fn delete_is_idempotent_for_an_orchestrator_and_not_found_for_a_person() {
    let f = fixture();
    let a = made(&f, "a", "dir", 1 << 20).await;
    f.volumes.delete(Caller::Person, "a").await.unwrap();
    assert!(!f.volumes.driver().manager.pool().volume_dir(&a.id).exists());
    f.volumes.delete(Caller::Orchestrator, &a.id).await.unwrap();
    let gone = f.volumes.delete(Caller::Person, "a").await.unwrap_err();
    assert_eq!(code(gone), Code::NotFound);
}

#[tokio::test]
async fn expand_grows_the_volume_and_its_limit() {
    let f = fixture();
    let a = made(&f, "a", "dir", 1 << 20).await;
    let grown = f
        .volumes
        .expand(Caller::Orchestrator, &a.id, 3 << 20, 0)
        .await
        .unwrap();
    assert_eq!((grown.capacity, grown.volume.capacity), (3 << 20, 3 << 20));
    assert!(
        !grown.node_expansion_required,
        "a directory has no filesystem"
    );
    let dir = f.volumes.driver().manager.pool().volume_dir(&a.id);
    assert_eq!(f.fake.limit_of(&dir), Some(3 << 20));
    let over = f
        .volumes
        .expand(Caller::Person, "a", 8 << 20, 4 << 20)
        .await
        .unwrap_err();
    assert_eq!(code(over), Code::OutOfRange);
}

#[tokio::test]
async fn modify_changes_mutable_parameters() {
    let f = fixture();
    made(&f, "a", "dir", 1 << 20).await;
    let rec = f
        .volumes
        .modify(
            Caller::Person,
            "a",
            BTreeMap::from([(
                volume_core::manager::modify::COMPRESSION.to_string(),
                "zstd".into(),
            )]),
        )
        .await
        .unwrap();
    assert_eq!(
        rec.mutable_parameters
            .get(volume_core::manager::modify::COMPRESSION)
            .map(String::as_str),
        Some("zstd")
    );
    let unknown = f
        .volumes
        .modify(
            Caller::Person,
            "a",
            BTreeMap::from([("colour".to_string(), "blue".into())]),
        )
        .await
        .unwrap_err();
    assert_eq!(code(unknown), Code::InvalidArgument);
}

#[tokio::test]
async fn snapshots_are_taken_and_deleted_by_name_or_id() {
    let f = fixture();
    let a = made(&f, "a", "dir", 1 << 20).await;
    let s = f
        .volumes
        .snapshot(Caller::Orchestrator, &a.id, "s")
        .await
        .unwrap();
    let missing = f
        .volumes
        .snapshot(Caller::Orchestrator, "a", "t")
        .await
        .unwrap_err();
    assert_eq!(code(missing), Code::NotFound);
    f.volumes
        .delete_snapshot(Caller::Person, "s")
        .await
        .unwrap();
    assert!(f.volumes.driver().manager.get_snapshot(&s.id).is_err());
    f.volumes
        .delete_snapshot(Caller::Orchestrator, &s.id)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_person_waits_out_a_busy_volume_an_orchestrator_does_not() {
    let f = fixture();
    let a = made(&f, "a", "dir", 1 << 20).await;
    let manager = Arc::clone(&f.volumes.driver().manager);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let id = a.id.clone();
    let holder = std::thread::spawn(move || {
        let _claim = manager.claim(&id).unwrap();
        held_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    held_rx.recv().unwrap();
    let busy = f
        .volumes
        .snapshot(Caller::Orchestrator, &a.id, "s")
        .await
        .unwrap_err();
    assert_eq!(code(busy), Code::Aborted);
    f.volumes
        .snapshot(Caller::Person, "a", "s")
        .await
        .expect("a person's call waits for the claim to end");
    holder.join().unwrap();
}

#[tokio::test]
async fn snapshots_are_listed_by_source_and_read_by_id_or_name() {
    use volume_core::manager::snapshot::SnapshotFilter;
    let f = fixture();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let v = f
            .volumes
            .create(Caller::Person, new_volume(name, "dir", 1 << 20))
            .await
            .unwrap();
        ids.push(v.id);
    }
    let sa = f.volumes.snapshot(Caller::Person, "a", "sa").await.unwrap();
    f.volumes.snapshot(Caller::Person, "b", "sb").await.unwrap();
    let all = f
        .volumes
        .snapshots(Caller::Orchestrator, SnapshotFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let of_a = SnapshotFilter {
        snapshot_id: None,
        source_volume_id: Some(ids[0].clone()),
    };
    let only_a = f
        .volumes
        .snapshots(Caller::Orchestrator, of_a, None, 10)
        .await
        .unwrap();
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].id, sa.id);
    assert_eq!(
        f.volumes
            .get_snapshot(Caller::Person, "sa")
            .await
            .unwrap()
            .id,
        sa.id
    );
    let by_name = f
        .volumes
        .get_snapshot(Caller::Orchestrator, "sa")
        .await
        .unwrap_err();
    assert_eq!(code(by_name), Code::NotFound);
}
