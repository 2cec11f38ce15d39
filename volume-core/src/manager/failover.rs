//! Failover: promoting a replica to primary, and a former primary stepping down when
//! it finds that another node promoted a replica while it was away (split brain).
//!
//! Every promotion gives the volume a new, higher generation. A primary that meets a
//! higher generation of its volume keeps what it holds in a CSI snapshot (its
//! divergent writes are never discarded silently), keeps the replication snapshots
//! the new primary also holds (so it catches up incrementally), and becomes a
//! replica.

use std::collections::BTreeMap;

use crate::error::{Error, IoContext, Result};
use crate::manager::{VolumeManager, is_valid_id, now};
use crate::model::{
    ReplicaRecord, ReplicaSnapshot, ReplicationSnapshot, VolumeRecord, VolumeState,
};
use crate::params::{FS_TYPE, KIND, REPLICAS, REPLICATION_INTERVAL};
use crate::replication::{SNAPSHOT_SUBVOLUME, names_in};

/// What a former primary did when it stepped down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteppedDown {
    /// The CSI snapshot holding the volume as this node last had it.
    pub snapshot_id: String,
    /// Its name.
    pub snapshot_name: String,
    /// The replication snapshots kept to catch up from (held by the new primary too).
    pub kept: Vec<String>,
    /// The ones dropped (the new primary never had them; their data is in the
    /// snapshot).
    pub dropped: Vec<String>,
}

/// Generations carry the promotion's time in their high bits and 20 random bits
/// below: two promotions of one volume (on two nodes, in the same second) do not
/// tie, and a later promotion ranks higher unless the clocks disagree by more than
/// the time between them.
fn new_generation(previous: u64) -> u64 {
    let random = u64::from(uuid::Uuid::new_v4().as_u128() as u32) & 0xF_FFFF;
    (previous + 1).max((now() << 20) | random)
}

/// The largest generation a promotion could have made by now (with a day of clock
/// skew): a peer claiming more is not believed.
pub(crate) fn max_plausible_generation() -> u64 {
    ((now() + 86_400) << 20) | 0xF_FFFF
}

impl VolumeManager {
    /// Makes this node's replica of `volume` (id, or name of a replica) the volume's
    /// primary, from the newest snapshot it received, with a new generation. The
    /// volume keeps its id (CSI names it by id); its replicas are the other nodes of
    /// its replication settings plus the node it was received from.
    pub fn promote(&self, volume: &str) -> Result<VolumeRecord> {
        let rep = self.find_replica(volume)?;
        let id = rep.id.clone();
        let _replica_guard = self.inflight().try_claim([format!("replica:{id}")])?;
        let _guard = self.claim(&id)?;
        if let Some(existing) = self.store.get::<VolumeRecord>(&id)? {
            if existing.state == VolumeState::Ready {
                self.finish_promotion(&id)?;
            }
            return Ok(existing);
        }
        // A stream cut off before a restart leaves its incoming directory behind.
        self.clear_incoming_of(&id)?;
        if self.store.get_by_name::<VolumeRecord>(&rep.name)?.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "a volume named {} already exists on this node",
                rep.name
            )));
        }
        let latest = rep.snapshots.last().cloned().ok_or_else(|| {
            Error::FailedPrecondition(format!("replica of {id} has received no snapshot yet"))
        })?;
        let source = self
            .replica_dir(&id)
            .join(&latest.name)
            .join(SNAPSHOT_SUBVOLUME);
        let generation = new_generation(rep.generation);
        let me = &self.node.node_id;
        let spec = rep.spec.clone().map(|mut s| {
            if !s.nodes.contains(&rep.source_node_id) {
                s.nodes.push(rep.source_node_id.clone());
            }
            s.nodes.retain(|n| n != me);
            s
        });
        let mut parameters = BTreeMap::from([(KIND.to_string(), rep.kind.to_string())]);
        if let Some(fs) = rep.fs {
            parameters.insert(FS_TYPE.to_string(), fs.to_string());
        }
        if let Some(s) = &spec {
            parameters.insert(REPLICAS.to_string(), s.copies.to_string());
            parameters.insert(
                REPLICATION_INTERVAL.to_string(),
                format!("{}s", s.interval_secs),
            );
        }
        let mut rec = VolumeRecord {
            id: id.clone(),
            name: rep.name.clone(),
            kind: rep.kind,
            fs: rep.fs,
            capacity: rep.capacity,
            state: VolumeState::Creating,
            parameters,
            created_at: now(),
            generation,
            replication: spec,
            replication_snapshots: rep
                .snapshots
                .iter()
                .map(|s| ReplicationSnapshot {
                    name: s.name.clone(),
                    taken_at: s.taken_at,
                })
                .collect(),
            ..Default::default()
        };
        // A chunk-diff replica of a loop volume (a copy, not a subvolume) becomes a
        // host image again where this node keeps them, and keeps shipping chunk diffs.
        let copied = !self.host.btrfs.is_subvolume(&source).unwrap_or(false);
        if rec.kind == crate::model::VolumeKind::Loop && copied && self.pool.host_images().is_some()
        {
            rec.layout = Some(crate::model::Layout::HostImage);
        }
        self.store.put(&rec)?;
        if let Err(e) = self.pool.allocate(&mut rec, Some(&source)) {
            if let Err(undo) = self.store.remove::<VolumeRecord>(&id) {
                tracing::warn!(volume.id = %id, error = %undo, "remove record of failed promotion");
            }
            return Err(e);
        }
        // Ready before anything of the replica moves: from here on a crash leaves a
        // volume and a replica record side by side, which the next start (or a repeated
        // promote) finishes; never a half-made volume that a restart would roll back
        // together with the snapshots it came from.
        rec.state = VolumeState::Ready;
        self.store.put(&rec)?;
        self.finish_promotion(&id)?;
        tracing::warn!(volume.id = %id, volume.name = %rec.name, generation, from_snapshot = %latest.name, "replica promoted to primary");
        Ok(rec)
    }

    /// Finishes the promotion of volume `id` (whose record is Ready): the received
    /// snapshots become its replication snapshots — the parents of incremental streams
    /// to the other replicas — and the replica record goes. Idempotent.
    pub(crate) fn finish_promotion(&self, id: &str) -> Result<()> {
        let from = self.replica_dir(id);
        let to = self.replication_dir(id);
        if from.exists() {
            self.clear_incoming_of(id)?;
            if to.exists() {
                self.release_replication(id)?;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
            }
            std::fs::rename(&from, &to)
                .ctx(|| format!("move {} to {}", from.display(), to.display()))?;
        }
        if self.store.get::<ReplicaRecord>(id)?.is_some() {
            self.store.remove::<ReplicaRecord>(id)?;
            tracing::info!(volume.id = %id, "promotion finished");
        }
        Ok(())
    }

    fn find_replica(&self, volume: &str) -> Result<ReplicaRecord> {
        if is_valid_id(volume)
            && let Some(r) = self.store.get::<ReplicaRecord>(volume)?
        {
            return Ok(r);
        }
        let matching: Vec<ReplicaRecord> = self
            .store
            .list::<ReplicaRecord>()?
            .into_iter()
            .filter(|r| r.name == volume)
            .collect();
        match matching.len() {
            1 => Ok(matching.into_iter().next().expect("one")),
            0 => Err(Error::VolumeNotFound(format!("replica {volume}"))),
            _ => Err(Error::InvalidArgument(format!(
                "several replicas are named {volume}: name it by id"
            ))),
        }
    }

    /// Steps down as primary of volume `id` because `new_primary` holds generation
    /// `new_generation` of it with replication snapshots `their_snapshots`: keeps the
    /// volume's data in a CSI snapshot, keeps the replication snapshots both hold and
    /// becomes a replica. Refused while the volume is staged, published or attached
    /// (its users would lose their data from under them): unstage it to resync.
    pub fn step_down(
        &self,
        id: &str,
        new_primary: &str,
        new_generation: u64,
        their_snapshots: &[String],
    ) -> Result<SteppedDown> {
        // A container that ended (or died with a crashed node) no longer holds it.
        self.release_vanished_before(id)?;
        let _guard = self.claim(id)?;
        let vol = self.get(id)?;
        let own_generation = vol.generation.max(1);
        if new_generation > max_plausible_generation() {
            return Err(Error::FailedPrecondition(format!(
                "node {new_primary} claims generation {new_generation} of {id}, beyond any \
                 promotion's clock: refused"
            )));
        }
        if own_generation >= new_generation {
            return Err(Error::FailedPrecondition(format!(
                "node {new_primary} has generation {new_generation} of {id}, not newer than \
                 this node's {own_generation}"
            )));
        }
        if vol.in_use() || !vol.attachments.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "split brain: node {new_primary} holds generation {new_generation} of {id} \
                 (this node {own_generation}); the volume is in use here, unstage it to let it \
                 resync (its data will be kept in a snapshot)"
            )));
        }
        let snapshot_name = format!("split-brain-{}-g{own_generation}", vol.name);
        // Under the volume's guard since the in-use check: nothing can stage it now.
        let snapshot = self.create_snapshot_claimed(&snapshot_name, id)?;
        let mut vol = self.get(id)?;
        let dir = self.replication_dir(id);
        let replica_dir = self.replica_dir(id);
        std::fs::create_dir_all(&replica_dir)
            .ctx(|| format!("create {}", replica_dir.display()))?;
        let mut rep = self
            .store
            .get::<ReplicaRecord>(id)?
            .unwrap_or_else(|| ReplicaRecord {
                id: id.to_string(),
                ..ReplicaRecord::default()
            });
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for name in names_in(&dir)? {
            if !their_snapshots.contains(&name) {
                dropped.push(name);
                continue;
            }
            let target = replica_dir.join(&name);
            if !target.exists() {
                std::fs::rename(dir.join(&name), &target).ctx(|| {
                    format!("move {} to {}", dir.join(&name).display(), target.display())
                })?;
            }
            let taken_at = vol
                .replication_snapshots
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.taken_at)
                .unwrap_or(0);
            if !rep.snapshots.iter().any(|s| s.name == name) {
                rep.snapshots.push(ReplicaSnapshot {
                    name: name.clone(),
                    parent: None,
                    stream_bytes: 0,
                    received_at: now(),
                    taken_at,
                });
            }
            kept.push(name);
        }
        let message = format!(
            "split brain: this node was primary of {} (generation {own_generation}) while node \
             {new_primary} was promoted (generation {new_generation}); this node's data is kept \
             in snapshot {} ({}), and it now replicates from {new_primary}",
            vol.name, snapshot.id, snapshot_name
        );
        rep.name = vol.name.clone();
        rep.kind = vol.kind;
        rep.fs = vol.fs;
        rep.capacity = vol.capacity;
        rep.source_node_id = new_primary.to_string();
        rep.generation = own_generation;
        rep.spec = vol.replication.clone();
        rep.split_brain = Some(message.clone());
        self.store.put(&rep)?;
        vol.state = VolumeState::Deleting;
        self.store.put(&vol)?;
        // Dropped snapshots and the volume itself: their data is in the CSI snapshot.
        self.forget(&vol)?;
        tracing::error!(volume.id = %id, snapshot.id = %snapshot.id, ?kept, ?dropped, "{message}");
        Ok(SteppedDown {
            snapshot_id: snapshot.id,
            snapshot_name,
            kept,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::error::Error;
    use crate::manager::tests::{fixture, req};
    use crate::replication::{Holding, IncomingHeader};

    fn ship(
        a: &Arc<crate::VolumeManager>,
        b: &Arc<crate::VolumeManager>,
        id: &str,
        source: &str,
    ) -> String {
        let holds = b.replica_state(id).unwrap();
        let snap = a.take_replication_snapshot(id).unwrap();
        let out = a.outgoing(id, &snap.name, &holds).unwrap();
        let mut bytes = Vec::new();
        let mut s = a.send_stream(&out).unwrap();
        std::io::Read::read_to_end(&mut s, &mut bytes).unwrap();
        s.finish().unwrap();
        let v = &out.volume;
        let mut rx = b
            .begin_receive(IncomingHeader {
                volume_id: id.to_string(),
                name: v.name.clone(),
                kind: v.kind,
                fs: v.fs,
                capacity: v.capacity,
                snapshot: out.name.clone(),
                parent: out.parent.as_ref().map(|p| p.0.clone()),
                source_node_id: source.into(),
                generation: v.generation,
                taken_at: out.taken_at,
                spec: v.replication.clone(),
                format: a.stream_format(),
            })
            .unwrap();
        rx.write(&bytes).unwrap();
        rx.commit(blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
            .unwrap();
        a.record_replica_ack(id, "b", &out.name, bytes.len() as u64)
            .unwrap();
        out.name
    }

    #[test]
    fn promote_then_old_primary_steps_down_keeping_its_data_and_common_snapshots() {
        let fa = fixture(true);
        let fb = fixture(true);
        let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
        let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
        assert_eq!(v.generation, 1);
        let data = a.pool().volume_dir(&v.id).join("data");
        std::fs::write(&data, b"one").unwrap();
        let s1 = ship(&a, &b, &v.id, "a");
        assert_eq!(s1, "1-g1");
        // The primary goes on writing; the replica never sees it.
        std::fs::write(&data, b"divergent").unwrap();
        let s2 = a.take_replication_snapshot(&v.id).unwrap();
        assert_eq!(s2.name, "2-g1");

        let promoted = b.promote("v").unwrap();
        assert_eq!(promoted.id, v.id);
        assert!(promoted.generation > 1);
        let b_data = b.pool().volume_dir(&v.id).join("data");
        assert_eq!(std::fs::read(&b_data).unwrap(), b"one");
        assert!(b.list_replicas().unwrap().is_empty());
        let Holding::Primary {
            generation,
            snapshots,
        } = b.holding(&v.id).unwrap()
        else {
            panic!("b is primary now");
        };
        assert_eq!(snapshots, vec!["1-g1".to_string()]);
        // A cannot step down for an older or equal generation.
        assert!(matches!(
            a.step_down(&v.id, "b", 1, &snapshots),
            Err(Error::FailedPrecondition(_))
        ));
        let down = a.step_down(&v.id, "b", generation, &snapshots).unwrap();
        assert_eq!(down.kept, vec!["1-g1".to_string()]);
        assert_eq!(down.dropped, vec!["2-g1".to_string()]);
        // The divergent data is in a CSI snapshot; the volume is gone; A is a replica.
        let snap = a.get_snapshot(&down.snapshot_id).unwrap();
        assert_eq!(snap.name, "split-brain-v-g1");
        let kept = a.pool().snapshot_dir(&snap.id).join("data");
        assert_eq!(std::fs::read(kept).unwrap(), b"divergent");
        assert!(matches!(a.get(&v.id), Err(Error::VolumeNotFound(_))));
        let reps = a.list_replicas().unwrap();
        assert_eq!(reps.len(), 1);
        assert!(
            reps[0]
                .split_brain
                .as_deref()
                .unwrap()
                .contains("split brain")
        );
        assert_eq!(a.replica_state(&v.id).unwrap(), vec!["1-g1".to_string()]);

        // B's next snapshot reaches A incrementally from the snapshot both hold.
        std::fs::write(&b_data, b"after failover").unwrap();
        let next = b.take_replication_snapshot(&v.id).unwrap();
        assert!(next.name.starts_with("2-g"), "{}", next.name);
        let out = b
            .outgoing(&v.id, &next.name, &a.replica_state(&v.id).unwrap())
            .unwrap();
        assert_eq!(out.parent.as_ref().unwrap().0, "1-g1");
    }

    #[test]
    fn step_down_is_refused_while_in_use_or_for_an_implausible_generation() {
        let fa = fixture(true);
        let fb = fixture(true);
        let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
        let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
        ship(&a, &b, &v.id, "a");
        let snaps = vec!["1-g1".to_string()];
        assert!(matches!(
            a.step_down(&v.id, "b", u64::MAX, &snaps),
            Err(Error::FailedPrecondition(_))
        ));
        a.attach(&v.id, "node-1", false, 0).unwrap();
        let err = a.step_down(&v.id, "b", 5, &snaps).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        // Nothing was touched: still the primary, no snapshot taken.
        assert!(a.get(&v.id).is_ok());
        assert!(
            a.list_snapshots(&Default::default(), None, 10)
                .unwrap()
                .is_empty()
        );
        assert!(a.list_replicas().unwrap().is_empty());
    }

    #[test]
    fn a_promotion_interrupted_after_ready_is_finished_at_start() {
        let fa = fixture(true);
        let fb = fixture(true);
        let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
        let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
        ship(&a, &b, &v.id, "a");
        let rep = b.list_replicas().unwrap().remove(0);
        b.promote(&v.id).unwrap();
        // Put back what a crash right after the Ready record would have left: the
        // replica directory and record beside the volume, plus a cut-off receive.
        std::fs::rename(b.replication_dir(&v.id), b.replica_dir(&v.id)).unwrap();
        std::fs::create_dir(b.replica_dir(&v.id).join("incoming-x")).unwrap();
        b.store.put(&rep).unwrap();
        b.reconcile().unwrap();
        assert!(b.list_replicas().unwrap().is_empty());
        assert!(!b.replica_dir(&v.id).exists());
        let moved = crate::replication::names_in(&b.replication_dir(&v.id)).unwrap();
        assert_eq!(moved, vec!["1-g1".to_string()]);
        assert!(!b.replication_dir(&v.id).join("incoming-x").exists());
        // Deleting the promoted volume leaves nothing behind.
        b.delete(&v.id).unwrap();
        assert!(!b.replication_dir(&v.id).exists());
    }

    #[test]
    fn a_stale_primary_cannot_overwrite_a_newer_replica() {
        let fa = fixture(true);
        let fb = fixture(true);
        let (a, b) = (Arc::new(fa.mgr), Arc::new(fb.mgr));
        let v = a.create(&req("v", "dir", 4 << 20)).unwrap();
        ship(&a, &b, &v.id, "a");
        let mut rep = b.list_replicas().unwrap().remove(0);
        rep.generation = 5;
        b.store.put(&rep).unwrap();
        let snap = a.take_replication_snapshot(&v.id).unwrap();
        let out = a.outgoing(&v.id, &snap.name, &[]).unwrap();
        let err = b
            .begin_receive(IncomingHeader {
                volume_id: v.id.clone(),
                name: "v".into(),
                kind: out.volume.kind,
                fs: None,
                capacity: out.volume.capacity,
                snapshot: out.name.clone(),
                parent: None,
                source_node_id: "a".into(),
                generation: 1,
                taken_at: 0,
                spec: None,
                format: b.stream_format(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("stale primary"), "{err}");
    }
}
