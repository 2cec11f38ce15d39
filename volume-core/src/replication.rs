//! Replication, first slice: shipping a volume's read-only snapshots to another node's
//! pool as btrfs send streams, full or incremental, and applying them there
//! atomically. Both pools must be btrfs. The transport (gRPC) is csi-driver's.
//!
//! Layout (each `data` a read-only subvolume):
//! ```text
//! <pool>/replication/<volume id>/<seq>/data        the primary's replication snapshots
//! <pool>/replicas/<volume id>/<seq>/data           a replica's received snapshots
//! <pool>/replicas/<volume id>/incoming-<n>/data    a stream being received
//! ```
//! `<seq>` is a decimal sequence number per volume, counted by the primary. A received
//! snapshot is put in place by renaming its `incoming-<n>` directory to `<seq>`: one
//! atomic rename of a plain directory (btrfs refuses to move a read-only subvolume to
//! another directory, EROFS). Neither tree holds CSI snapshots, so ListSnapshots never
//! shows them.

use std::io::Write as _;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::guard::OperationGuard;
use crate::manager::{VolumeManager, is_valid_id, new_id, now, validate_name};
use crate::model::{FsType, ReplicaAck, ReplicaRecord, ReplicaSnapshot, VolumeKind, VolumeRecord};
use crate::os::btrfs::{ReceiveSink, SendStream};
use crate::pool::PoolBackend;

/// Directory of the primary's replication snapshots, inside the pool root.
pub const REPLICATION_DIR: &str = "replication";
/// Directory of received replicas, inside the pool root.
pub const REPLICAS_DIR: &str = "replicas";
const INCOMING_PREFIX: &str = "incoming-";
/// Name of the read-only subvolume inside a snapshot's directory (also its name in
/// the send stream, so `btrfs receive` creates it under this name).
pub const SNAPSHOT_SUBVOLUME: &str = "data";

/// The sequence number a replication snapshot name stands for: 1 to 20 decimal
/// digits, no leading zero. Anything else is not a name this module ever joins to a
/// path.
pub fn parse_seq(name: &str) -> Option<u64> {
    if name.is_empty() || name.len() > 20 || name.starts_with('0') {
        return None;
    }
    if !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// A replication snapshot taken on the primary, ready to send.
#[derive(Debug, Clone)]
pub struct OutgoingSnapshot {
    /// The volume as it was when the snapshot was taken.
    pub volume: VolumeRecord,
    /// The snapshot's name (its sequence number).
    pub name: String,
    /// Its read-only subvolume.
    pub path: PathBuf,
    /// The newest snapshot the replica also holds, name and path: the stream is
    /// relative to it.
    pub parent: Option<(String, PathBuf)>,
}

/// What a replication stream's header says.
#[derive(Debug, Clone)]
pub struct IncomingHeader {
    /// The volume's id on the primary.
    pub volume_id: String,
    /// The volume's name on the primary.
    pub name: String,
    /// Its kind.
    pub kind: VolumeKind,
    /// Its filesystem (loop volumes).
    pub fs: Option<FsType>,
    /// Its capacity.
    pub capacity: u64,
    /// The snapshot the stream carries.
    pub snapshot: String,
    /// The snapshot it is relative to, which the replica must hold.
    pub parent: Option<String>,
    /// The sending node.
    pub source_node_id: String,
}

fn require_btrfs(mgr: &VolumeManager) -> Result<()> {
    match mgr.pool.backend() {
        PoolBackend::Btrfs { .. } => Ok(()),
        PoolBackend::Plain => Err(Error::FailedPrecondition(
            "replication needs a btrfs pool (plain pools cannot replicate yet)".into(),
        )),
    }
}

/// Sequence numbers of the snapshots in `dir`, ascending.
fn seqs_in(dir: &std::path::Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.ctx(|| format!("read {}", dir.display()))?;
                if let Some(seq) = e.file_name().to_str().and_then(parse_seq) {
                    out.push(seq);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    }
    out.sort_unstable();
    Ok(out)
}

impl VolumeManager {
    /// Where the primary keeps volume `id`'s replication snapshots.
    pub fn replication_dir(&self, id: &str) -> PathBuf {
        debug_assert!(is_valid_id(id));
        self.pool.root().join(REPLICATION_DIR).join(id)
    }

    /// Where this node keeps the replica of volume `id`.
    pub fn replica_dir(&self, id: &str) -> PathBuf {
        debug_assert!(is_valid_id(id));
        self.pool.root().join(REPLICAS_DIR).join(id)
    }

    /// Takes the next replication snapshot of `volume` (name or id) — a read-only
    /// snapshot of its subvolume, the filesystem frozen if it is a mounted loop
    /// volume — and picks as parent the newest of `replica_holds` (the replica's
    /// snapshot names) that this node still has.
    pub fn take_replication_snapshot(
        &self,
        volume: &str,
        replica_holds: &[String],
    ) -> Result<OutgoingSnapshot> {
        require_btrfs(self)?;
        let id = self.resolve(volume)?.id;
        let _guard = self.claim(&id)?;
        let vol = self.get(&id)?;
        let dir = self.replication_dir(&id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let have = seqs_in(&dir)?;
        let seq = have.last().copied().unwrap_or(0) + 1;
        let name = seq.to_string();
        let seq_dir = dir.join(&name);
        std::fs::create_dir(&seq_dir).ctx(|| format!("create {}", seq_dir.display()))?;
        let path = seq_dir.join(SNAPSHOT_SUBVOLUME);
        let source = self.pool.volume_dir(&id);
        if let Err(e) = self.with_frozen(std::slice::from_ref(&vol), || {
            self.host.btrfs.snapshot(&source, &path, true).map(|_| ())
        }) {
            let _ = std::fs::remove_dir(&seq_dir);
            return Err(e);
        }
        let parent = replica_holds
            .iter()
            .filter_map(|n| parse_seq(n))
            .filter(|s| have.contains(s))
            .max()
            .map(|s| {
                let name = s.to_string();
                let path = dir.join(&name).join(SNAPSHOT_SUBVOLUME);
                (name, path)
            });
        tracing::info!(volume.id = %id, snapshot = %name, parent = ?parent.as_ref().map(|p| &p.0), "replication snapshot taken");
        Ok(OutgoingSnapshot {
            volume: vol,
            name,
            path,
            parent,
        })
    }

    /// Records that peer `node_id` acknowledged snapshot `snapshot` of volume `id`.
    pub fn record_replica_ack(
        &self,
        id: &str,
        node_id: &str,
        snapshot: &str,
        bytes_sent: u64,
    ) -> Result<()> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        let ack = ReplicaAck {
            node_id: node_id.to_string(),
            snapshot: snapshot.to_string(),
            bytes_sent,
            acknowledged_at: now(),
        };
        match rec.replicas.iter_mut().find(|r| r.node_id == node_id) {
            Some(r) => *r = ack,
            None => rec.replicas.push(ack),
        }
        self.store.put(&rec)
    }

    /// Removes volume `id`'s replication snapshots (the volume is being deleted).
    pub(crate) fn release_replication(&self, id: &str) -> Result<()> {
        let dir = self.replication_dir(id);
        for seq in seqs_in(&dir)? {
            let seq_dir = dir.join(seq.to_string());
            let sub = seq_dir.join(SNAPSHOT_SUBVOLUME);
            if sub.exists() {
                self.host.btrfs.delete_subvolume(&sub)?;
            }
            std::fs::remove_dir(&seq_dir).ctx(|| format!("remove {}", seq_dir.display()))?;
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// Starts the send stream of `snap` (incremental when it has a parent).
    pub fn send_stream(&self, snap: &OutgoingSnapshot) -> Result<Box<dyn SendStream>> {
        self.host
            .btrfs
            .send(&snap.path, snap.parent.as_ref().map(|p| p.1.as_path()))
    }

    /// The names of the snapshots this node holds of volume `id` as a replica, oldest
    /// first (empty when it holds none).
    pub fn replica_state(&self, id: &str) -> Result<Vec<String>> {
        if !is_valid_id(id) {
            return Err(Error::InvalidArgument(format!("{id:?} is not a volume id")));
        }
        Ok(self
            .store
            .get::<ReplicaRecord>(id)?
            .map(|r| r.snapshots.into_iter().map(|s| s.name).collect())
            .unwrap_or_default())
    }

    /// Every replica this node holds.
    pub fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.store.list::<ReplicaRecord>()
    }

    /// Starts applying a replication stream described by `header`: checks it, clears
    /// what an earlier interrupted receive of this volume left, and starts the receiver
    /// in a fresh `incoming-<n>` directory. Feed it with [`IncomingSnapshot::write`],
    /// then [`IncomingSnapshot::commit`]; dropped before commit, it removes everything
    /// it made.
    pub fn begin_receive(&self, header: IncomingHeader) -> Result<IncomingSnapshot<'_>> {
        require_btrfs(self)?;
        if !is_valid_id(&header.volume_id) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not a volume id",
                header.volume_id
            )));
        }
        validate_name(&header.name)?;
        if parse_seq(&header.snapshot).is_none()
            || header
                .parent
                .as_deref()
                .is_some_and(|p| parse_seq(p).is_none())
        {
            return Err(Error::InvalidArgument(
                "snapshot and parent names must be sequence numbers".into(),
            ));
        }
        let guard = self
            .inflight()
            .try_claim([format!("replica:{}", header.volume_id)])?;
        if self.store.get::<VolumeRecord>(&header.volume_id)?.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is a volume of this node, not a replica",
                header.volume_id
            )));
        }
        let dir = self.replica_dir(&header.volume_id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        self.clear_incoming(&dir)?;
        if dir.join(&header.snapshot).exists() {
            return Err(Error::FailedPrecondition(format!(
                "replica of {} already holds snapshot {}",
                header.volume_id, header.snapshot
            )));
        }
        if let Some(p) = &header.parent
            && !dir.join(p).join(SNAPSHOT_SUBVOLUME).exists()
        {
            return Err(Error::FailedPrecondition(format!(
                "replica of {} does not hold parent snapshot {p}",
                header.volume_id
            )));
        }
        let incoming = dir.join(format!("{INCOMING_PREFIX}{}", new_id("")));
        std::fs::create_dir(&incoming).ctx(|| format!("create {}", incoming.display()))?;
        let mut rx = IncomingSnapshot {
            mgr: self,
            header,
            dir,
            incoming,
            sink: None,
            hasher: blake3::Hasher::new(),
            length: 0,
            done: false,
            _guard: guard,
        };
        rx.sink = Some(self.host.btrfs.receive(&rx.incoming)?);
        Ok(rx)
    }

    /// Removes `incoming-*` directories under a replica directory, with any partial
    /// subvolume in them.
    fn clear_incoming(&self, dir: &std::path::Path) -> Result<()> {
        for e in std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))? {
            let e = e.ctx(|| format!("read {}", dir.display()))?;
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(INCOMING_PREFIX))
            {
                self.remove_incoming(&e.path())?;
            }
        }
        Ok(())
    }

    fn remove_incoming(&self, incoming: &std::path::Path) -> Result<()> {
        if let Ok(entries) = std::fs::read_dir(incoming) {
            for e in entries.flatten() {
                self.host.btrfs.delete_subvolume(&e.path())?;
            }
        }
        match std::fs::remove_dir(incoming) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", incoming.display()), e)),
        }
    }
}

/// A replication stream being applied on the replica. Never half-applied: the
/// received subvolume is moved into place (one rename) only after the receiver
/// succeeded and the stream's length and blake3 digest match the trailer.
#[derive(Debug)]
pub struct IncomingSnapshot<'a> {
    mgr: &'a VolumeManager,
    header: IncomingHeader,
    dir: PathBuf,
    incoming: PathBuf,
    sink: Option<Box<dyn ReceiveSink>>,
    hasher: blake3::Hasher,
    length: u64,
    done: bool,
    _guard: OperationGuard,
}

impl IncomingSnapshot<'_> {
    /// Passes the next bytes of the stream to the receiver.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.length += data.len() as u64;
        match &mut self.sink {
            Some(sink) => sink.write_all(data).ctx(|| "write to btrfs receive".into()),
            None => Err(Error::FailedPrecondition("stream already finished".into())),
        }
    }

    /// Finishes the stream: the receiver must succeed and `length` and `digest` (the
    /// sender's blake3 of the whole stream) must match what arrived; then the snapshot
    /// is moved into place and recorded.
    pub fn commit(mut self, digest: &[u8], length: u64) -> Result<ReplicaSnapshot> {
        let sink = self
            .sink
            .take()
            .ok_or_else(|| Error::FailedPrecondition("stream already finished".into()))?;
        sink.finish()?;
        if length != self.length {
            return Err(Error::StreamMismatch(format!(
                "{} bytes arrived, the sender sent {length}",
                self.length
            )));
        }
        if self.hasher.finalize().as_bytes().as_slice() != digest {
            return Err(Error::StreamMismatch("blake3 digest differs".into()));
        }
        let received = self.incoming.join(SNAPSHOT_SUBVOLUME);
        let entries = std::fs::read_dir(&self.incoming)
            .ctx(|| format!("read {}", self.incoming.display()))?
            .count();
        if !received.is_dir() || entries != 1 {
            return Err(Error::StreamMismatch(format!(
                "the stream did not hold exactly the subvolume {SNAPSHOT_SUBVOLUME}"
            )));
        }
        let target = self.dir.join(&self.header.snapshot);
        std::fs::rename(&self.incoming, &target)
            .ctx(|| format!("move {} to {}", self.incoming.display(), target.display()))?;
        let h = &self.header;
        let mut rec = self
            .mgr
            .store
            .get::<ReplicaRecord>(&h.volume_id)?
            .unwrap_or_else(|| ReplicaRecord {
                id: h.volume_id.clone(),
                ..ReplicaRecord::default()
            });
        rec.name = h.name.clone();
        rec.kind = h.kind;
        rec.fs = h.fs;
        rec.capacity = h.capacity;
        rec.source_node_id = h.source_node_id.clone();
        let snap = ReplicaSnapshot {
            name: h.snapshot.clone(),
            parent: h.parent.clone(),
            stream_bytes: self.length,
            received_at: now(),
        };
        rec.snapshots.push(snap.clone());
        self.done = true;
        if let Err(e) = self.mgr.store.put(&rec) {
            if let Err(undo) = self.mgr.remove_incoming(&target) {
                tracing::warn!(path = %target.display(), error = %undo, "remove unrecorded replica snapshot");
            }
            return Err(e);
        }
        tracing::info!(volume.id = %h.volume_id, snapshot = %h.snapshot, parent = ?h.parent, bytes = self.length, "replica snapshot applied");
        Ok(snap)
    }
}

impl Drop for IncomingSnapshot<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Stop the receiver first, so the partial subvolume is no longer written.
        drop(self.sink.take());
        if let Err(e) = self.mgr.remove_incoming(&self.incoming) {
            tracing::warn!(path = %self.incoming.display(), error = %e, "remove failed incoming replica");
        } else {
            tracing::info!(volume.id = %self.header.volume_id, snapshot = %self.header.snapshot, "replication stream discarded");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::{IncomingHeader, parse_seq};
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
        }
    }

    fn stream_of(f: &crate::manager::tests::Fixture, snap: &super::OutgoingSnapshot) -> Vec<u8> {
        let mut s = f.mgr.send_stream(snap).unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        s.finish().unwrap();
        bytes
    }

    #[test]
    fn seq_names_are_plain_decimal() {
        assert_eq!(parse_seq("1"), Some(1));
        assert_eq!(parse_seq("42"), Some(42));
        for bad in ["", "0", "01", "1a", "../1", "-1", "123456789012345678901"] {
            assert_eq!(parse_seq(bad), None, "{bad}");
        }
    }

    #[test]
    fn snapshot_ships_and_applies_then_next_is_relative_to_the_common_one() {
        let a = fixture(true);
        let b = fixture(true);
        let v = a.mgr.create(&req("v", "dir", 4 << 20)).unwrap();
        std::fs::write(a.mgr.pool().volume_dir(&v.id).join("data"), b"one").unwrap();

        let s1 = a.mgr.take_replication_snapshot("v", &[]).unwrap();
        assert_eq!(s1.name, "1");
        assert!(s1.parent.is_none());
        let bytes = stream_of(&a, &s1);
        let mut rx = b.mgr.begin_receive(header(&v.id, "1", None)).unwrap();
        rx.write(&bytes).unwrap();
        let got = rx
            .commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
            .unwrap();
        assert_eq!(got.name, "1");
        let applied = b.mgr.replica_dir(&v.id).join("1/data/data");
        assert_eq!(std::fs::read(applied).unwrap(), b"one");
        assert_eq!(b.mgr.replica_state(&v.id).unwrap(), vec!["1".to_string()]);
        assert_eq!(b.mgr.list_replicas().unwrap()[0].name, "vol");
        a.mgr.record_replica_ack(&v.id, "b", "1", 3).unwrap();
        a.mgr.record_replica_ack(&v.id, "b", "1", 3).unwrap();
        let acks = a.mgr.get(&v.id).unwrap().replicas;
        assert_eq!(acks.len(), 1);
        assert_eq!(
            (acks[0].node_id.as_str(), acks[0].snapshot.as_str()),
            ("b", "1")
        );

        let s2 = a
            .mgr
            .take_replication_snapshot(&v.id, &b.mgr.replica_state(&v.id).unwrap())
            .unwrap();
        assert_eq!(s2.name, "2");
        assert_eq!(s2.parent.as_ref().unwrap().0, "1");
        stream_of(&a, &s2);
        assert!(a.fake.calls().iter().any(|c| c.starts_with("send")
            && c.contains(&format!("{}/2/data", v.id))
            && c.ends_with(&format!("{}/1/data", v.id))));
        // Replication snapshots are not CSI snapshots.
        assert!(
            a.mgr
                .list_snapshots(&Default::default(), None, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_stream_that_does_not_match_its_trailer_leaves_nothing() {
        let a = fixture(true);
        let b = fixture(true);
        let v = a.mgr.create(&req("v", "dir", 4 << 20)).unwrap();
        std::fs::write(a.mgr.pool().volume_dir(&v.id).join("data"), b"one").unwrap();
        let s1 = a.mgr.take_replication_snapshot("v", &[]).unwrap();
        let bytes = stream_of(&a, &s1);

        // Wrong digest: received fine, but refused and removed.
        let mut rx = b.mgr.begin_receive(header(&v.id, "1", None)).unwrap();
        rx.write(&bytes).unwrap();
        let wrong = blake3::hash(b"something else");
        assert!(matches!(
            rx.commit(wrong.as_bytes(), bytes.len() as u64),
            Err(Error::StreamMismatch(_))
        ));
        // Truncated: the receiver fails.
        let mut rx = b.mgr.begin_receive(header(&v.id, "1", None)).unwrap();
        rx.write(&bytes[..bytes.len() - 1]).unwrap();
        let short = &bytes[..bytes.len() - 1];
        assert!(
            rx.commit(blake3::hash(short).as_bytes(), short.len() as u64)
                .is_err()
        );
        // Abandoned mid-stream (connection lost).
        let mut rx = b.mgr.begin_receive(header(&v.id, "1", None)).unwrap();
        rx.write(&bytes[..4]).unwrap();
        drop(rx);

        let dir = b.mgr.replica_dir(&v.id);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert!(b.mgr.replica_state(&v.id).unwrap().is_empty());

        // A parent the replica does not hold is refused before anything is made.
        assert!(matches!(
            b.mgr.begin_receive(header(&v.id, "2", Some("1"))),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
