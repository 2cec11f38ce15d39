//! Replication: shipping a volume's read-only snapshots to other nodes' pools, full
//! or incremental, and applying them there atomically. On btrfs pools a snapshot is a
//! read-only subvolume and the stream is `btrfs send`'s; on other pools a snapshot is
//! a copy (reflinked where the filesystem can) and the stream is a blake3-verified
//! chunk diff ([`crate::chunkdiff`]). A loop volume whose image is on the host's
//! filesystem (layout `host-image`) is shipped by chunk diff from a btrfs pool too,
//! its snapshots copies in the pool, and a btrfs pool takes chunk diffs of loop
//! volumes; otherwise both ends must use the same kind. The transport
//! (gRPC), the schedule and the peers are the daemon's (stowage-daemon); promotion and split brain are
//! in [`crate::manager::failover`].
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

mod primary;
mod replica;

pub use replica::IncomingSnapshot;

#[cfg(test)]
mod tests;
