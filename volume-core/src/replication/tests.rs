use std::io::Read as _;
use std::sync::Arc;

use super::{IncomingHeader, parse_seq, parse_snapshot_name};
use crate::VolumeManager;
use crate::error::Error;
use crate::manager::tests::{fixture, req};
use crate::model::VolumeKind;

fn header(id: &str, snapshot: &str, parent: Option<&str>) -> IncomingHeader {
    IncomingHeader {
        volume_id: id.to_string(),
        name: "vol".into(),
        kind: VolumeKind::Dir,
        fs: None,
        capacity: 4 << 20,
        snapshot: snapshot.into(),
        parent: parent.map(str::to_string),
        source_node_id: "a".into(),
        generation: 1,
        taken_at: 0,
        spec: None,
        format: super::StreamFormat::Btrfs,
    }
}

fn stream_of(m: &VolumeManager, snap: &super::OutgoingSnapshot) -> Vec<u8> {
    let mut s = m.send_stream(snap).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    s.finish().unwrap();
    bytes
}

#[test]
fn names_are_seq_dash_g_generation() {
    assert_eq!(parse_seq("1"), Some(1));
    assert_eq!(parse_seq("42"), Some(42));
    for bad in ["", "0", "01", "1a", "../1", "-1", "123456789012345678901"] {
        assert_eq!(parse_seq(bad), None, "{bad}");
    }
    assert_eq!(parse_snapshot_name("3-g1"), Some((3, 1)));
    assert_eq!(super::snapshot_name(12, 7), "12-g7");
    for bad in ["3", "3-g", "-g1", "3-g0", "../3-g1", "3-g1/x", "3_g1"] {
        assert_eq!(parse_snapshot_name(bad), None, "{bad}");
    }
}

#[test]
fn snapshot_ships_and_applies_then_next_is_relative_to_the_common_one() {
    let (fa, fb) = (fixture(true), fixture(true));
    let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
    let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
    std::fs::write(a.pool().volume_dir(&v.id).join("data"), b"one").unwrap();

    let s1 = a.take_and_prepare("v", &[]).unwrap();
    assert_eq!(s1.name, "1-g1");
    assert!(s1.parent.is_none());
    let bytes = stream_of(&a, &s1);
    let mut rx = b.begin_receive(header(&v.id, "1-g1", None)).unwrap();
    rx.write(&bytes).unwrap();
    assert_eq!(rx.received(), bytes.len() as u64);
    assert_eq!(rx.prefix_digest(), *blake3::hash(&bytes).as_bytes());
    let got = rx
        .commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        .unwrap();
    assert_eq!(got.name, "1-g1");
    let applied = b.replica_dir(&v.id).join("1-g1/data/data");
    assert_eq!(std::fs::read(applied).unwrap(), b"one");
    assert_eq!(b.replica_state(&v.id).unwrap(), vec!["1-g1".to_string()]);
    assert_eq!(b.list_replicas().unwrap()[0].name, "vol");
    a.record_replica_ack(&v.id, "b", "1-g1", 3).unwrap();
    a.record_replica_ack(&v.id, "b", "1-g1", 3).unwrap();
    let acks = a.get(&v.id).unwrap().replicas;
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].node_id.as_str(), acks[0].snapshot.as_str()),
        ("b", "1-g1")
    );

    let s2 = a
        .take_and_prepare(&v.id, &b.replica_state(&v.id).unwrap())
        .unwrap();
    assert_eq!(s2.name, "2-g1");
    assert_eq!(s2.parent.as_ref().unwrap().0, "1-g1");
    stream_of(&a, &s2);
    assert!(fa.fake.calls().iter().any(|c| c.starts_with("send")
        && c.contains(&format!("{}/2-g1/data", v.id))
        && c.ends_with(&format!("{}/1-g1/data", v.id))));
    // Replication snapshots are not CSI snapshots.
    assert!(
        a.list_snapshots(&Default::default(), None, 10)
            .unwrap()
            .is_empty()
    );
    // Pruning keeps the newest and the acknowledged one, drops the rest.
    a.take_replication_snapshot(&v.id).unwrap();
    a.prune_replication(&v.id, &[]).unwrap();
    let left = super::names_in(&a.replication_dir(&v.id)).unwrap();
    assert_eq!(left, vec!["1-g1".to_string(), "3-g1".to_string()]);
    let recorded: Vec<_> = a
        .get(&v.id)
        .unwrap()
        .replication_snapshots
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(recorded, left);
}

#[test]
fn plain_pools_ship_chunk_diffs_and_refuse_btrfs_streams() {
    let (fa, fb) = (fixture(false), fixture(false));
    let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
    assert_eq!(a.stream_format(), super::StreamFormat::Chunk);
    let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
    let data = a.pool().volume_dir(&v.id).join("data");
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&data, &big).unwrap();
    let plain = |name: &str, parent: Option<&str>| IncomingHeader {
        format: super::StreamFormat::Chunk,
        ..header(&v.id, name, parent)
    };
    let s1 = a.take_and_prepare("v", &[]).unwrap();
    let bytes = stream_of(&a, &s1);
    assert!(bytes.len() > 3 << 20);
    // A btrfs stream header is refused by a plain pool.
    assert!(matches!(
        b.begin_receive(header(&v.id, &s1.name, None)),
        Err(Error::FailedPrecondition(_))
    ));
    let mut rx = b.begin_receive(plain(&s1.name, None)).unwrap();
    rx.write(&bytes).unwrap();
    rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        .unwrap();
    let got = b.replica_dir(&v.id).join(&s1.name).join("data/data");
    assert_eq!(std::fs::read(&got).unwrap(), big);

    // One byte changed: one chunk travels, applied to a copy of the parent.
    let mut big2 = big.clone();
    big2[(1 << 20) + 7] ^= 1;
    std::fs::write(&data, &big2).unwrap();
    let s2 = a
        .take_and_prepare(&v.id, &b.replica_state(&v.id).unwrap())
        .unwrap();
    assert_eq!(s2.parent.as_ref().unwrap().0, s1.name);
    let bytes = stream_of(&a, &s2);
    assert!(bytes.len() < (1 << 20) + 4096, "{}", bytes.len());
    let mut rx = b.begin_receive(plain(&s2.name, Some(&s1.name))).unwrap();
    rx.write(&bytes).unwrap();
    rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        .unwrap();
    let got2 = b.replica_dir(&v.id).join(&s2.name).join("data/data");
    assert_eq!(std::fs::read(&got2).unwrap(), big2);
    assert_eq!(
        std::fs::read(&got).unwrap(),
        big,
        "the parent copy is unchanged"
    );

    // A cut-off stream leaves nothing; promotion works on a plain pool too.
    let s3 = a
        .take_and_prepare(&v.id, &b.replica_state(&v.id).unwrap())
        .unwrap();
    let bytes = stream_of(&a, &s3);
    let mut rx = b.begin_receive(plain(&s3.name, Some(&s2.name))).unwrap();
    rx.write(&bytes[..10]).unwrap();
    drop(rx);
    let left: Vec<_> = std::fs::read_dir(b.replica_dir(&v.id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("incoming-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let promoted = b.promote(&v.id).unwrap();
    let vol = b.pool().volume_dir(&promoted.id).join("data");
    assert_eq!(std::fs::read(vol).unwrap(), big2);
}

#[test]
fn host_images_ship_chunk_diffs_between_btrfs_pools_and_promote_to_host_images() {
    use crate::manager::tests::embedded_fixture;
    use crate::model::Layout;
    let (fa, fb) = (
        embedded_fixture(Layout::HostImage),
        embedded_fixture(Layout::HostImage),
    );
    let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
    let v = a.create(&req("v", "loop", 4 << 20)).unwrap();
    assert_eq!(v.layout, Some(Layout::HostImage));
    assert_eq!(a.stream_format_of(&v), super::StreamFormat::Chunk);
    let image = a.pool().image_path(&v.id);
    let mut content = std::fs::read(&image).unwrap();
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&image, &content).unwrap();

    let s1 = a.take_and_prepare("v", &[]).unwrap();
    assert!(
        !fa.fake.host().btrfs.is_subvolume(&s1.path).unwrap(),
        "a host image's replication snapshot is a copy"
    );
    let bytes = stream_of(&a, &s1);
    let loop_header = |name: &str, parent: Option<&str>, kind| IncomingHeader {
        format: super::StreamFormat::Chunk,
        kind,
        ..header(&v.id, name, parent)
    };
    // A btrfs pool takes chunk diffs of loop volumes only.
    assert!(matches!(
        b.begin_receive(loop_header(&s1.name, None, VolumeKind::Dir)),
        Err(Error::FailedPrecondition(_))
    ));
    let mut rx = b
        .begin_receive(loop_header(&s1.name, None, VolumeKind::Loop))
        .unwrap();
    rx.write(&bytes).unwrap();
    rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        .unwrap();

    // One block changed: the next stream is relative to the first.
    content[1 << 20..(1 << 20) + 4096].fill(9);
    std::fs::write(&image, &content).unwrap();
    let s2 = a
        .take_and_prepare(&v.id, &b.replica_state(&v.id).unwrap())
        .unwrap();
    assert_eq!(s2.parent.as_ref().unwrap().0, s1.name);
    let small = stream_of(&a, &s2);
    assert!(bytes.len() > 4 << 20, "{}", bytes.len());
    assert!(small.len() < (1 << 20) + 4096, "{}", small.len());
    let mut rx = b
        .begin_receive(loop_header(&s2.name, Some(&s1.name), VolumeKind::Loop))
        .unwrap();
    rx.write(&small).unwrap();
    rx.commit(blake3::hash(&small).as_bytes(), small.len() as u64)
        .unwrap();
    // Pruning removes the older copy (a directory, not a subvolume).
    a.prune_replication(&v.id, &[]).unwrap();
    assert_eq!(
        super::names_in(&a.replication_dir(&v.id)).unwrap(),
        vec![s2.name.clone()]
    );

    let promoted = b.promote(&v.id).unwrap();
    assert_eq!(promoted.layout, Some(Layout::HostImage));
    let got = b.pool().image_path(&promoted.id);
    assert!(got.starts_with(fb.dir.path().join("images")));
    assert_eq!(std::fs::read(got).unwrap(), content);
}

#[test]
fn a_replica_keeps_its_newest_snapshots_only() {
    let (fa, fb) = (fixture(true), fixture(true));
    let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
    let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
    for i in 1..=5u64 {
        let holds = b.replica_state(&v.id).unwrap();
        let out = a.take_and_prepare(&v.id, &holds).unwrap();
        let bytes = stream_of(&a, &out);
        let parent = out.parent.as_ref().map(|p| p.0.as_str());
        let mut rx = b.begin_receive(header(&v.id, &out.name, parent)).unwrap();
        rx.write(&bytes).unwrap();
        rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
            .unwrap();
        assert_eq!(out.name, format!("{i}-g1"));
    }
    assert_eq!(
        b.replica_state(&v.id).unwrap(),
        vec!["3-g1".to_string(), "4-g1".into(), "5-g1".into()]
    );
    let on_disk = super::names_in(&b.replica_dir(&v.id)).unwrap();
    assert_eq!(on_disk, b.replica_state(&v.id).unwrap());
}

#[test]
fn a_stream_that_does_not_match_its_trailer_leaves_nothing() {
    let (fa, fb) = (fixture(true), fixture(true));
    let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
    let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
    std::fs::write(a.pool().volume_dir(&v.id).join("data"), b"one").unwrap();
    let s1 = a.take_and_prepare("v", &[]).unwrap();
    let bytes = stream_of(&a, &s1);

    // Wrong digest: received fine, but refused and removed.
    let mut rx = b.begin_receive(header(&v.id, "1-g1", None)).unwrap();
    rx.write(&bytes).unwrap();
    let wrong = blake3::hash(b"something else");
    assert!(matches!(
        rx.commit(wrong.as_bytes(), bytes.len() as u64),
        Err(Error::StreamMismatch(_))
    ));
    // Truncated: the receiver fails.
    let mut rx = b.begin_receive(header(&v.id, "1-g1", None)).unwrap();
    rx.write(&bytes[..bytes.len() - 1]).unwrap();
    let short = &bytes[..bytes.len() - 1];
    assert!(
        rx.commit(blake3::hash(short).as_bytes(), short.len() as u64)
            .is_err()
    );
    // Abandoned mid-stream (connection lost).
    let mut rx = b.begin_receive(header(&v.id, "1-g1", None)).unwrap();
    rx.write(&bytes[..4]).unwrap();
    drop(rx);

    // Not even the replica directory stays.
    let dir = b.replica_dir(&v.id);
    assert!(!dir.exists(), "left behind: {}", dir.display());
    assert!(b.replica_state(&v.id).unwrap().is_empty());

    // A parent the replica does not hold is refused before anything is made.
    assert!(matches!(
        b.begin_receive(header(&v.id, "2-g1", Some("1-g1"))),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(!dir.exists());
    // A generation beyond any promotion's clock is refused before any data.
    let mut far = header(&v.id, "1-g1", None);
    far.generation = u64::MAX;
    assert!(matches!(
        b.begin_receive(far),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        b.begin_receive(header(&v.id, &format!("1-g{}", u64::MAX >> 1), None)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(!dir.exists());
    // Removal: refused for a newer generation, then done, then nothing to do.
    let out = a.take_and_prepare(&v.id, &[]).unwrap();
    let bytes = stream_of(&a, &out);
    let mut rx = b.begin_receive(header(&v.id, &out.name, None)).unwrap();
    rx.write(&bytes).unwrap();
    rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        .unwrap();
    assert!(matches!(
        b.remove_replica(&v.id, Some(0)),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(b.remove_replica(&v.id, Some(1)).unwrap());
    assert!(!b.replica_dir(&v.id).exists());
    assert!(b.list_replicas().unwrap().is_empty());
    assert!(!b.remove_replica(&v.id, None).unwrap());
    // A volume of the receiving node is never overwritten by a stream.
    let own = b.create(&req("own", "dir", 4 << 20)).unwrap();
    let err = b.begin_receive(header(&own.id, "1-g1", None)).unwrap_err();
    assert!(err.to_string().contains("not a replica"), "{err}");
}
