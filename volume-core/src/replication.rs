//! Replication: shipping a volume's read-only snapshots to other nodes' pools, full
//! or incremental, and applying them there atomically. On btrfs pools a snapshot is a
//! read-only subvolume and the stream is `btrfs send`'s; on other pools a snapshot is
//! a copy (reflinked where the filesystem can) and the stream is a blake3-verified
//! chunk diff ([`crate::chunkdiff`]). A loop volume whose image is on the host's
//! filesystem (layout `host-image`) is shipped by chunk diff from a btrfs pool too,
//! its snapshots copies in the pool, and a btrfs pool takes chunk diffs of loop
//! volumes; otherwise both ends must use the same kind. The transport
//! (gRPC), the schedule and the peers are the daemon's (stowage-daemon); promotion and split brain are
//! in [`crate::failover`].
//!
//! Layout (each `data` a read-only subvolume):
//! ```text
//! <pool>/replication/<volume id>/<name>/data      the primary's replication snapshots
//! <pool>/replicas/<volume id>/<name>/data         a replica's received snapshots
//! <pool>/replicas/<volume id>/incoming-<n>/data   a stream being received
//! ```
//! A snapshot's name is `<seq>-g<generation>`: a sequence number per volume and the
//! generation of the primary that took it, so that two primaries of one volume
//! (before and after a failover) never give different data the same name. A received
//! snapshot is put in place by renaming its `incoming-<n>` directory to its name: one
//! atomic rename of a plain directory (btrfs refuses to move a read-only subvolume to
//! another directory, EROFS). Neither tree holds CSI snapshots, so ListSnapshots never
//! shows them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::guard::OperationGuard;
use crate::manager::{VolumeManager, is_valid_id, new_id, now, validate_name};
use crate::model::{
    FsType, ReplicaAck, ReplicaRecord, ReplicaSnapshot, ReplicationSnapshot, ReplicationSpec,
    VolumeKind, VolumeRecord,
};
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
/// Received snapshots a replica keeps (newest first): the newest is the copy, the
/// older ones let a primary that lost a newer one (a failover) still send an
/// incremental stream.
pub const REPLICA_KEEPS: usize = 3;

/// A positive decimal number of 1 to 20 digits without a leading zero.
pub fn parse_seq(name: &str) -> Option<u64> {
    if name.is_empty() || name.len() > 20 || name.starts_with('0') {
        return None;
    }
    if !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The name of replication snapshot `seq` taken in `generation`.
pub fn snapshot_name(seq: u64, generation: u64) -> String {
    format!("{seq}-g{generation}")
}

/// Sequence number and generation of a replication snapshot name. Anything else is
/// not a name this module ever joins to a path.
pub fn parse_snapshot_name(name: &str) -> Option<(u64, u64)> {
    let (seq, generation) = name.split_once("-g")?;
    Some((parse_seq(seq)?, parse_seq(generation)?))
}

fn seq_of(name: &str) -> u64 {
    parse_snapshot_name(name).map(|(s, _)| s).unwrap_or(0)
}

/// A replication snapshot taken on the primary, ready to send.
#[derive(Debug, Clone)]
pub struct OutgoingSnapshot {
    /// The volume as it was when the stream was prepared.
    pub volume: VolumeRecord,
    /// The snapshot's name.
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub taken_at: u64,
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
    /// The sender's generation of the volume.
    pub generation: u64,
    /// When the snapshot was taken on the primary.
    pub taken_at: u64,
    /// The volume's replication settings.
    pub spec: Option<ReplicationSpec>,
    /// The kind of stream.
    pub format: StreamFormat,
}

/// What this node holds of a volume, as a peer asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Nothing.
    Nothing,
    /// A replica of that generation with these snapshots, oldest first.
    Replica {
        /// The generation of the newest snapshot's sender.
        generation: u64,
        /// Snapshot names, oldest first.
        snapshots: Vec<String>,
    },
    /// The volume itself, as its primary.
    Primary {
        /// This node's generation of it.
        generation: u64,
        /// Its replication snapshots, oldest first.
        snapshots: Vec<String>,
    },
}

/// How a pool's replication streams are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `btrfs send` / `btrfs receive`.
    Btrfs,
    /// [`crate::chunkdiff`].
    Chunk,
}

impl StreamFormat {
    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamFormat::Btrfs => "btrfs",
            StreamFormat::Chunk => "chunk",
        }
    }

    /// Parses the header spelling (empty: btrfs, what older senders meant).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "btrfs" => Ok(StreamFormat::Btrfs),
            "chunk" => Ok(StreamFormat::Chunk),
            other => Err(Error::InvalidArgument(format!(
                "stream format {other:?} is not btrfs or chunk"
            ))),
        }
    }
}

/// The chunk-diff sender running in a thread, read through a pipe.
struct ChunkSend {
    reader: std::io::PipeReader,
    worker: std::thread::JoinHandle<Result<()>>,
}

impl std::io::Read for ChunkSend {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl SendStream for ChunkSend {
    fn finish(self: Box<Self>) -> Result<()> {
        drop(self.reader);
        self.worker
            .join()
            .map_err(|_| Error::StreamMismatch("the chunk-diff sender panicked".into()))?
    }
}

/// The chunk-diff receiver running in a thread, fed through a pipe. Dropped
/// unfinished, it closes the pipe and waits for the thread, so nothing writes into the
/// incoming directory after that.
struct ChunkReceive {
    writer: Option<std::io::PipeWriter>,
    worker: Option<std::thread::JoinHandle<Result<()>>>,
}

impl std::io::Write for ChunkReceive {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChunkReceive {
    fn wait(&mut self) -> Result<()> {
        drop(self.writer.take());
        match self.worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| Error::StreamMismatch("the chunk-diff receiver panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl ReceiveSink for ChunkReceive {
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.wait()
    }
}

impl Drop for ChunkReceive {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// Writes back everything the filesystem holding `path` has not written yet
/// (syncfs(2)).
fn sync_filesystem(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    nix::unistd::syncfs(&f).map_err(|e| Error::io(format!("syncfs {}", path.display()), e.into()))
}

/// Snapshot names in `dir`, by ascending sequence number.
pub(crate) fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.ctx(|| format!("read {}", dir.display()))?;
                if let Some(name) = e.file_name().to_str()
                    && parse_snapshot_name(name).is_some()
                {
                    out.push(name.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    }
    out.sort_by_key(|n| seq_of(n));
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

    /// Claims volume `id`, waiting up to two seconds for a CSI operation on it to end
    /// (background replication should not fail because a stage was running).
    fn claim_patiently(&self, id: &str) -> Result<OperationGuard> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.claim(id) {
                Err(Error::Busy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Takes the next replication snapshot of `volume` (name or id): a read-only
    /// snapshot of its subvolume, the filesystem frozen if it is a mounted loop volume.
    pub fn take_replication_snapshot(&self, volume: &str) -> Result<ReplicationSnapshot> {
        let id = self.resolve(volume)?.id;
        let _guard = self.claim_patiently(&id)?;
        let mut vol = self.get(&id)?;
        let dir = self.replication_dir(&id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let seq = names_in(&dir)?
            .iter()
            .chain(vol.replication_snapshots.iter().map(|s| &s.name))
            .map(|n| seq_of(n))
            .max()
            .unwrap_or(0)
            + 1;
        let name = snapshot_name(seq, vol.generation.max(1));
        let seq_dir = dir.join(&name);
        std::fs::create_dir(&seq_dir).ctx(|| format!("create {}", seq_dir.display()))?;
        let path = seq_dir.join(SNAPSHOT_SUBVOLUME);
        let source = self.pool.volume_dir(&id);
        let format = self.stream_format_of(&vol);
        let taken_at = now();
        let result = self.room_for_replication_copy(&vol).and_then(|()| {
            self.with_frozen(std::slice::from_ref(&vol), || match format {
                StreamFormat::Btrfs => self.host.btrfs.snapshot(&source, &path, true).map(|_| ()),
                StreamFormat::Chunk => self.host.copier.copy_tree(&source, &path),
            })
        });
        if let Err(e) = result {
            // A copy cut short leaves part of a tree: all of it goes.
            if let Err(cleanup) = self.remove_snapshot_dir(&seq_dir) {
                tracing::warn!(path = %seq_dir.display(), error = %cleanup, "remove failed replication snapshot");
            }
            return Err(e);
        }
        let snap = ReplicationSnapshot {
            name: name.clone(),
            taken_at,
        };
        vol.replication_snapshots.push(snap.clone());
        if let Err(e) = self.store.put(&vol) {
            let _ = self.remove_snapshot_dir(&seq_dir);
            return Err(e);
        }
        tracing::debug!(volume.id = %id, snapshot = %name, "replication snapshot taken");
        Ok(snap)
    }

    /// The stream that brings a replica holding `replica_holds` (snapshot names) to
    /// snapshot `name` of volume `id`: relative to the newest older snapshot both hold,
    /// else full.
    pub fn outgoing(
        &self,
        id: &str,
        name: &str,
        replica_holds: &[String],
    ) -> Result<OutgoingSnapshot> {
        let vol = self.get(id)?;
        let snap = vol
            .replication_snapshots
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("volume {id} has no replication snapshot {name}"))
            })?;
        let dir = self.replication_dir(id);
        let path = dir.join(name).join(SNAPSHOT_SUBVOLUME);
        if !path.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "replication snapshot {name} of {id} is gone from the pool"
            )));
        }
        let seq = seq_of(name);
        let parent = names_in(&dir)?
            .into_iter()
            .rev()
            .filter(|n| seq_of(n) < seq && replica_holds.contains(n))
            .find(|n| dir.join(n).join(SNAPSHOT_SUBVOLUME).is_dir())
            .map(|n| {
                let path = dir.join(&n).join(SNAPSHOT_SUBVOLUME);
                (n, path)
            });
        Ok(OutgoingSnapshot {
            volume: vol,
            name: name.to_string(),
            taken_at: snap.taken_at,
            path,
            parent,
        })
    }

    /// Takes a replication snapshot and prepares the stream for a replica holding
    /// `replica_holds` (the one-shot `vol replicate`).
    pub fn take_and_prepare(
        &self,
        volume: &str,
        replica_holds: &[String],
    ) -> Result<OutgoingSnapshot> {
        let id = self.resolve(volume)?.id;
        let snap = self.take_replication_snapshot(&id)?;
        self.outgoing(&id, &snap.name, replica_holds)
    }

    /// Records that peer `node_id` acknowledged snapshot `snapshot` of volume `id`.
    pub fn record_replica_ack(
        &self,
        id: &str,
        node_id: &str,
        snapshot: &str,
        bytes_sent: u64,
    ) -> Result<()> {
        let _guard = self.claim_patiently(id)?;
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

    /// Deletes the replication snapshots of volume `id` that no replica needs: keeps
    /// the newest, each one a replica acknowledged, and those in `keep` (streams in
    /// flight).
    pub fn prune_replication(&self, id: &str, keep: &[String]) -> Result<()> {
        let _guard = self.claim_patiently(id)?;
        let mut rec = self.get(id)?;
        let dir = self.replication_dir(id);
        let names = names_in(&dir)?;
        let newest = names.last().cloned();
        // After a promotion, the newest snapshot of the older generation is the one
        // the other copies most likely hold: kept until each replica node has
        // acknowledged a snapshot of this generation, so they catch up incrementally.
        let generation = rec.generation.max(1);
        let of_generation = |n: &str| parse_snapshot_name(n).map(|(_, g)| g);
        let all_caught_up = rec.replication.as_ref().is_none_or(|spec| {
            spec.nodes.iter().all(|node| {
                rec.replicas
                    .iter()
                    .any(|a| &a.node_id == node && of_generation(&a.snapshot) == Some(generation))
            })
        });
        let inherited = names
            .iter()
            .rfind(|n| of_generation(n).is_some_and(|g| g < generation))
            .cloned();
        let mut removed = Vec::new();
        for name in &names {
            let needed = Some(name) == newest.as_ref()
                || keep.contains(name)
                || (!all_caught_up && Some(name) == inherited.as_ref())
                || rec.replicas.iter().any(|r| &r.snapshot == name);
            if !needed {
                self.remove_snapshot_dir(&dir.join(name))?;
                removed.push(name.clone());
            }
        }
        if !removed.is_empty() || rec.replication_snapshots.len() != names.len() - removed.len() {
            rec.replication_snapshots
                .retain(|s| names.contains(&s.name) && !removed.contains(&s.name));
            self.store.put(&rec)?;
            tracing::debug!(volume.id = %id, ?removed, "replication snapshots pruned");
        }
        Ok(())
    }

    /// The kind of replication stream this node's pool makes of what it holds itself
    /// (and takes for every kind of volume).
    pub fn stream_format(&self) -> StreamFormat {
        match self.pool.backend() {
            PoolBackend::Btrfs { .. } => StreamFormat::Btrfs,
            PoolBackend::Plain => StreamFormat::Chunk,
        }
    }

    /// The kind of replication stream volume `vol` is shipped with: a chunk diff for
    /// an image on the host's filesystem, the pool's own kind otherwise.
    pub fn stream_format_of(&self, vol: &VolumeRecord) -> StreamFormat {
        match self.pool.layout_of(vol) {
            crate::model::Layout::HostImage => StreamFormat::Chunk,
            _ => self.stream_format(),
        }
    }

    /// Whether this node takes a stream of `format` for a volume of `kind`: its pool's
    /// own, or chunk diffs of loop volumes where it keeps host images (what such a
    /// replica becomes when promoted, so that it goes on shipping chunk diffs).
    fn takes(&self, format: StreamFormat, kind: VolumeKind) -> bool {
        format == self.stream_format()
            || (format == StreamFormat::Chunk
                && kind == VolumeKind::Loop
                && self.pool.host_images().is_some())
    }

    /// A host image's replication snapshot is a full copy into the pool: NO_SPACE
    /// unless the pool has room for the blocks the image holds.
    fn room_for_replication_copy(&self, vol: &VolumeRecord) -> Result<()> {
        if self.pool.layout_of(vol) != crate::model::Layout::HostImage {
            return Ok(());
        }
        let image = self.pool.image_path(&vol.id);
        let held = std::fs::metadata(&image)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .ctx(|| format!("stat {}", image.display()))?;
        self.pool
            .available_for(held, "replication snapshot")
            .map(drop)
    }

    /// Removes a snapshot's tree: a subvolume, or a directory (a chunk-diff copy).
    fn remove_tree(&self, path: &Path) -> Result<()> {
        let subvolume = matches!(self.pool.backend(), PoolBackend::Btrfs { .. })
            && self
                .host
                .btrfs
                .is_subvolume(path)
                .ctx(|| format!("examine {}", path.display()))?;
        if subvolume {
            self.host.btrfs.delete_subvolume(path)
        } else {
            std::fs::remove_dir_all(path).ctx(|| format!("remove {}", path.display()))
        }
    }

    /// Removes a snapshot directory and the read-only tree in it.
    pub(crate) fn remove_snapshot_dir(&self, seq_dir: &Path) -> Result<()> {
        let sub = seq_dir.join(SNAPSHOT_SUBVOLUME);
        if sub.exists() {
            self.remove_tree(&sub)?;
        }
        match std::fs::remove_dir(seq_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", seq_dir.display()), e)),
        }
    }

    /// Removes volume `id`'s replication snapshots (the volume is being deleted).
    pub(crate) fn release_replication(&self, id: &str) -> Result<()> {
        let dir = self.replication_dir(id);
        for name in names_in(&dir)? {
            self.remove_snapshot_dir(&dir.join(name))?;
        }
        // Anything else (an incoming directory carried over by a promotion).
        if dir.exists() {
            self.clear_incoming(&dir)?;
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
        }
    }

    /// Starts the send stream of `snap` (incremental when it has a parent).
    pub fn send_stream(&self, snap: &OutgoingSnapshot) -> Result<Box<dyn SendStream>> {
        let parent = snap.parent.as_ref().map(|p| p.1.clone());
        match self.stream_format_of(&snap.volume) {
            StreamFormat::Btrfs => self.host.btrfs.send(&snap.path, parent.as_deref()),
            StreamFormat::Chunk => {
                let (reader, writer) =
                    std::io::pipe().ctx(|| "create a pipe for the chunk-diff stream".into())?;
                let new = snap.path.clone();
                let worker = std::thread::Builder::new()
                    .name("chunkdiff-send".into())
                    .spawn(move || crate::chunkdiff::send(&new, parent.as_deref(), writer))
                    .ctx(|| "start the chunk-diff sender".into())?;
                Ok(Box::new(ChunkSend { reader, worker }))
            }
        }
    }

    /// What this node holds of volume `id`: the volume itself, a replica, or nothing.
    pub fn holding(&self, id: &str) -> Result<Holding> {
        if !is_valid_id(id) {
            return Err(Error::InvalidArgument(format!("{id:?} is not a volume id")));
        }
        if let Some(v) = self.store.get::<VolumeRecord>(id)? {
            return Ok(Holding::Primary {
                generation: v.generation.max(1),
                snapshots: names_in(&self.replication_dir(id))?,
            });
        }
        Ok(match self.store.get::<ReplicaRecord>(id)? {
            Some(r) => Holding::Replica {
                generation: r.generation.max(1),
                snapshots: r.snapshots.into_iter().map(|s| s.name).collect(),
            },
            None => Holding::Nothing,
        })
    }

    /// The names of the snapshots this node holds of volume `id` as a replica, oldest
    /// first (empty when it holds none).
    #[cfg(test)]
    pub(crate) fn replica_state(&self, id: &str) -> Result<Vec<String>> {
        Ok(match self.holding(id)? {
            Holding::Replica { snapshots, .. } => snapshots,
            _ => Vec::new(),
        })
    }

    /// Every replica this node holds.
    pub fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.store.list::<ReplicaRecord>()
    }

    /// Removes this node's replica of volume `id` (its primary deleted the volume,
    /// or no longer places a copy here). `up_to_generation`: only a replica of that
    /// generation or older (a stale primary cannot remove a newer copy). False when
    /// there was none.
    pub fn remove_replica(&self, id: &str, up_to_generation: Option<u64>) -> Result<bool> {
        if !is_valid_id(id) {
            return Err(Error::InvalidArgument(format!("{id:?} is not a volume id")));
        }
        let _guard = self.inflight().try_claim([format!("replica:{id}")])?;
        let Some(rec) = self.store.get::<ReplicaRecord>(id)? else {
            return Ok(false);
        };
        if let Some(g) = up_to_generation
            && rec.generation > g
        {
            return Err(Error::FailedPrecondition(format!(
                "replica of {id} has generation {}, newer than the caller's {g}",
                rec.generation
            )));
        }
        let dir = self.replica_dir(id);
        if dir.exists() {
            self.clear_incoming(&dir)?;
            for name in names_in(&dir)? {
                self.remove_snapshot_dir(&dir.join(name))?;
            }
            std::fs::remove_dir(&dir).ctx(|| format!("remove {}", dir.display()))?;
        }
        self.store.remove::<ReplicaRecord>(id)?;
        tracing::info!(volume.id = %id, volume.name = %rec.name, "replica removed");
        Ok(true)
    }

    /// Starts applying a replication stream described by `header`: checks it, clears
    /// what an earlier interrupted receive of this volume left, and starts the receiver
    /// in a fresh `incoming-<n>` directory. Feed it with [`IncomingSnapshot::write`],
    /// then [`IncomingSnapshot::commit`]; dropped before commit, it removes everything
    /// it made.
    pub fn begin_receive(self: &Arc<Self>, header: IncomingHeader) -> Result<IncomingSnapshot> {
        if !self.takes(header.format, header.kind) {
            return Err(Error::FailedPrecondition(format!(
                "the sender streams {} but this node's pool takes {} streams for a {} volume \
                 (both pools must be btrfs, or neither; a btrfs pool that keeps host \
                 images also takes chunk diffs of loop volumes)",
                header.format.as_str(),
                self.stream_format().as_str(),
                header.kind
            )));
        }
        if !is_valid_id(&header.volume_id) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not a volume id",
                header.volume_id
            )));
        }
        validate_name(&header.name)?;
        if parse_snapshot_name(&header.snapshot).is_none()
            || header
                .parent
                .as_deref()
                .is_some_and(|p| parse_snapshot_name(p).is_none())
        {
            return Err(Error::InvalidArgument(
                "snapshot and parent names must be <seq>-g<generation>".into(),
            ));
        }
        let newest_generation = parse_snapshot_name(&header.snapshot)
            .map(|(_, g)| g)
            .unwrap_or(0)
            .max(header.generation);
        if newest_generation > crate::failover::max_plausible_generation() {
            return Err(Error::InvalidArgument(format!(
                "generation {newest_generation} of {} is beyond any promotion's clock",
                header.volume_id
            )));
        }
        let guard = self
            .inflight()
            .try_claim([format!("replica:{}", header.volume_id)])?;
        if let Some(own) = self.store.get::<VolumeRecord>(&header.volume_id)? {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is a volume of this node (generation {}), not a replica; \
                 the sender has generation {}",
                header.volume_id,
                own.generation.max(1),
                header.generation
            )));
        }
        if let Some(r) = self.store.get::<ReplicaRecord>(&header.volume_id)?
            && r.generation > header.generation
        {
            return Err(Error::FailedPrecondition(format!(
                "stale primary: this replica of {} has generation {}, the sender {}",
                header.volume_id, r.generation, header.generation
            )));
        }
        let dir = self.replica_dir(&header.volume_id);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let id = header.volume_id.clone();
        let result = self.open_incoming(header, dir, guard);
        if result.is_err() {
            // A refused stream leaves nothing, not even the directory it would use.
            self.drop_unused_replica_dir(&id);
        }
        result
    }

    /// The rest of [`Self::begin_receive`], once the replica directory exists.
    fn open_incoming(
        self: &Arc<Self>,
        header: IncomingHeader,
        dir: PathBuf,
        guard: crate::guard::OperationGuard,
    ) -> Result<IncomingSnapshot> {
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
            mgr: Arc::clone(self),
            header,
            dir,
            incoming,
            sink: None,
            hasher: blake3::Hasher::new(),
            length: 0,
            done: false,
            _guard: guard,
        };
        rx.sink = Some(match rx.header.format {
            StreamFormat::Btrfs => {
                let parent_root = rx
                    .header
                    .parent
                    .as_ref()
                    .map(|p| rx.dir.join(p).join(SNAPSHOT_SUBVOLUME));
                let parent_uuids = match &parent_root {
                    Some(p) => self.host.btrfs.subvolume_uuids(p)?,
                    None => Vec::new(),
                };
                let expect = crate::os::sendstream::Expect {
                    subvolume: SNAPSHOT_SUBVOLUME.to_string(),
                    parent_uuids,
                    parent_root,
                };
                self.host.btrfs.receive(&rx.incoming, expect)?
            }
            StreamFormat::Chunk => {
                // The stream applies to a copy of the parent (or an empty tree).
                let target = rx.incoming.join(SNAPSHOT_SUBVOLUME);
                match &rx.header.parent {
                    Some(p) => self
                        .host
                        .copier
                        .copy_tree(&rx.dir.join(p).join(SNAPSHOT_SUBVOLUME), &target)?,
                    None => std::fs::create_dir(&target)
                        .ctx(|| format!("create {}", target.display()))?,
                }
                let (reader, writer) =
                    std::io::pipe().ctx(|| "create a pipe for the chunk-diff stream".into())?;
                let worker = std::thread::Builder::new()
                    .name("chunkdiff-apply".into())
                    .spawn(move || crate::chunkdiff::apply(reader, &target))
                    .ctx(|| "start the chunk-diff receiver".into())?;
                Box::new(ChunkReceive {
                    writer: Some(writer),
                    worker: Some(worker),
                })
            }
        });
        Ok(rx)
    }

    /// Removes the replica directory of volume `id` if a refused or discarded stream
    /// made it and nothing else is in it (no replica of `id` is recorded here).
    fn drop_unused_replica_dir(&self, id: &str) {
        if !matches!(self.store.get::<ReplicaRecord>(id), Ok(None)) {
            return;
        }
        let dir = self.replica_dir(id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(volume.id = %id, "removed empty replica directory"),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTEMPTY)) => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "remove empty replica directory")
            }
        }
    }

    /// Removes what cut-off receives of volume `id` left (`incoming-*`).
    pub(crate) fn clear_incoming_of(&self, id: &str) -> Result<()> {
        let dir = self.replica_dir(id);
        if dir.exists() {
            self.clear_incoming(&dir)?;
        }
        Ok(())
    }

    /// Removes `incoming-*` directories under a replica directory, with any partial
    /// subvolume in them.
    fn clear_incoming(&self, dir: &Path) -> Result<()> {
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

    fn remove_incoming(&self, incoming: &Path) -> Result<()> {
        if let Ok(entries) = std::fs::read_dir(incoming) {
            for e in entries.flatten() {
                self.remove_tree(&e.path())?;
            }
        }
        match std::fs::remove_dir(incoming) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", incoming.display()), e)),
        }
    }

    /// Which received snapshots of replica `rec` to keep: the newest [`REPLICA_KEEPS`]
    /// of the lineage ending in `newest`. Snapshots of an older generation newer than
    /// `newest`'s parent were never part of the new primary's history: they are
    /// dropped with a warning. Only the record changes here; [`Self::remove_unrecorded`]
    /// removes the directories once the record is stored.
    fn prune_replica(&self, rec: &mut ReplicaRecord, newest: &str, parent: Option<&str>) {
        let (_, new_generation) = parse_snapshot_name(newest).unwrap_or((0, 0));
        let parent_seq = parent.map(seq_of).unwrap_or(0);
        let mut keep: Vec<String> = Vec::new();
        for s in rec.snapshots.iter().rev() {
            let (seq, generation) = parse_snapshot_name(&s.name).unwrap_or((0, 0));
            let off_lineage = s.name != newest && generation < new_generation && seq > parent_seq;
            if off_lineage {
                tracing::warn!(volume.id = %rec.id, snapshot = %s.name, "dropping a replica snapshot the new primary never had (taken by the primary before a failover)");
            } else if keep.len() < REPLICA_KEEPS {
                keep.push(s.name.clone());
            }
        }
        rec.snapshots.retain(|s| keep.contains(&s.name));
    }

    /// Removes the snapshot directories of replica `rec` that its (stored) record does
    /// not list. A failure leaves a directory that the next call removes.
    fn remove_unrecorded(&self, rec: &ReplicaRecord) {
        let dir = self.replica_dir(&rec.id);
        let names = match names_in(&dir) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(volume.id = %rec.id, error = %e, "list replica snapshots");
                return;
            }
        };
        for name in names {
            if rec.snapshots.iter().any(|s| s.name == name) {
                continue;
            }
            if let Err(e) = self.remove_snapshot_dir(&dir.join(&name)) {
                tracing::warn!(volume.id = %rec.id, snapshot = %name, error = %e, "remove old replica snapshot");
            }
        }
    }
}

/// A replication stream being applied on the replica. Never half-applied: the
/// received subvolume is moved into place (one rename) only after the receiver
/// succeeded and the stream's length and blake3 digest match the trailer. It may be
/// kept (with its receiver running) across a broken connection, so that the sender
/// resumes where the stream stopped.
#[derive(Debug)]
pub struct IncomingSnapshot {
    mgr: Arc<VolumeManager>,
    header: IncomingHeader,
    dir: PathBuf,
    incoming: PathBuf,
    sink: Option<Box<dyn ReceiveSink>>,
    hasher: blake3::Hasher,
    length: u64,
    done: bool,
    _guard: OperationGuard,
}

impl IncomingSnapshot {
    /// The stream's header.
    pub fn header(&self) -> &IncomingHeader {
        &self.header
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.length
    }

    /// blake3 of the bytes received so far (a resuming sender checks that its stream
    /// starts with them).
    pub fn prefix_digest(&self) -> [u8; 32] {
        *self.hasher.clone().finalize().as_bytes()
    }

    /// Passes the next bytes of the stream to the receiver.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.length += data.len() as u64;
        match &mut self.sink {
            Some(sink) => sink
                .write_all(data)
                .ctx(|| "write to the stream's receiver".into()),
            None => Err(Error::FailedPrecondition("stream already finished".into())),
        }
    }

    /// Finishes the stream: the receiver must succeed and `length` and `digest` (the
    /// sender's blake3 of the whole stream) must match what arrived; then the snapshot
    /// is moved into place and recorded, and older snapshots are pruned.
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
        // On disk before it is acknowledged: `btrfs receive` commits its metadata, but
        // file data reaches the disk on a commit only with `flushoncommit`; a replica
        // that lost power after acknowledging could hold the record of a snapshot
        // whose files are incomplete. Then the rename, then its directory.
        sync_filesystem(&self.incoming)?;
        let target = self.dir.join(&self.header.snapshot);
        std::fs::rename(&self.incoming, &target)
            .ctx(|| format!("move {} to {}", self.incoming.display(), target.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("sync {}", self.dir.display()))?;
        let mgr = Arc::clone(&self.mgr);
        let h = &self.header;
        let mut rec = mgr
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
        rec.generation = rec.generation.max(h.generation);
        if h.spec.is_some() {
            rec.spec = h.spec.clone();
        }
        let snap = ReplicaSnapshot {
            name: h.snapshot.clone(),
            parent: h.parent.clone(),
            stream_bytes: self.length,
            received_at: now(),
            taken_at: h.taken_at,
        };
        rec.snapshots.push(snap.clone());
        self.done = true;
        mgr.prune_replica(&mut rec, &h.snapshot, h.parent.as_deref());
        if let Err(e) = mgr.store.put(&rec) {
            if let Err(undo) = mgr.remove_incoming(&target) {
                tracing::warn!(path = %target.display(), error = %undo, "remove unrecorded replica snapshot");
            }
            return Err(e);
        }
        // The record first, then the directories it no longer lists.
        mgr.remove_unrecorded(&rec);
        tracing::info!(volume.id = %h.volume_id, snapshot = %h.snapshot, parent = ?h.parent, bytes = self.length, "replica snapshot applied");
        Ok(snap)
    }
}

impl Drop for IncomingSnapshot {
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
        self.mgr.drop_unused_replica_dir(&self.header.volume_id);
    }
}

#[cfg(test)]
mod tests {
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
}
