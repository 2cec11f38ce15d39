//! The primary's side of replication. A schedule ([`run`]) looks at every replicated
//! volume once a second: when its interval has passed it takes a replication
//! snapshot (volume-core), then brings each replica node to the newest snapshot with
//! a `btrfs send` stream — incremental from the newest snapshot both hold, else full —
//! sent to the peer's `ReceiveSnapshot` as a header, data chunks of at most 1 MiB and
//! a trailer with the stream's length and blake3. A stream cut off mid-way is resumed
//! from the byte the replica holds. A peer that answers with a newer generation of
//! the volume makes this node step down (split brain, see volume-core's failover).
//!
//! Per link (volume, replica node) the schedule keeps what the status views show:
//! state, lag and the last error ([`ReplicationState`]).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::snapshot_chunk::Part;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use volume_core::VolumeRecord;
use volume_core::model::VolumeHealth;
use volume_core::replication::{IncomingSnapshot, OutgoingSnapshot};

use crate::driver::Driver;
use crate::peer::MAX_CHUNK;
use crate::rpc::blocking;
use crate::status::{peer_status, to_status};

/// How long after a failed attempt a link is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a replica keeps a cut-off stream ready to resume.
pub const PARKED_FOR: Duration = Duration::from_secs(600);
/// How often the schedule looks at the volumes.
const TICK: Duration = Duration::from_secs(1);

/// What the schedule knows of one link (volume, replica node) beyond the volume's
/// record.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// A stream to the node is under way.
    pub in_flight: bool,
    /// Why the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
    /// When the last attempt ended.
    pub last_attempt: Option<Instant>,
    /// Stream bytes still to deliver, as of the last attempt.
    pub lag_bytes: u64,
    /// The node holds another generation of the volume.
    pub diverged: Option<String>,
    /// The snapshot being sent (kept from pruning while it may be resumed).
    pub sending: Option<String>,
}

/// A stream cut off mid-way, kept on the replica with its receiver running.
#[derive(Debug)]
pub struct Parked {
    /// The half-received snapshot.
    pub incoming: IncomingSnapshot,
    /// When it was cut off.
    pub since: Instant,
}

/// Runtime replication state of the daemon (lost at restart: a restarted primary
/// sees its replicas as syncing until they acknowledge again; a restarted replica
/// discards half-received streams).
#[derive(Debug, Default)]
pub struct ReplicationState {
    links: Mutex<HashMap<(String, String), Link>>,
    parked: Mutex<HashMap<String, Parked>>,
    busy: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReplicationState {
    /// A copy of the link's state.
    pub fn link(&self, volume_id: &str, node_id: &str) -> Link {
        lock(&self.links)
            .get(&(volume_id.to_string(), node_id.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, volume_id: &str, node_id: &str, f: impl FnOnce(&mut Link)) {
        let mut links = lock(&self.links);
        f(links
            .entry((volume_id.to_string(), node_id.to_string()))
            .or_default());
    }

    /// Keeps a cut-off incoming stream for a resuming sender.
    pub fn park(&self, incoming: IncomingSnapshot) {
        let id = incoming.header().volume_id.clone();
        tracing::info!(volume.id = %id, snapshot = %incoming.header().snapshot, received = incoming.received(), "stream cut off; kept to resume");
        lock(&self.parked).insert(
            id,
            Parked {
                incoming,
                since: Instant::now(),
            },
        );
    }

    /// Takes the parked stream of volume `id` (dropping it discards it: do that off
    /// the async runtime, see [`dispose`]).
    pub fn unpark(&self, id: &str) -> Option<IncomingSnapshot> {
        self.expire();
        lock(&self.parked).remove(id).map(|p| p.incoming)
    }

    /// Forgets the links of volumes not in `live` (deleted, or no longer replicated).
    pub fn retain_links(&self, live: &HashSet<String>) {
        lock(&self.links).retain(|(v, _), _| live.contains(v));
    }

    /// What the parked stream of volume `id` holds, for a sender deciding to resume.
    pub fn partial(&self, id: &str) -> Option<pb::PartialStream> {
        self.expire();
        lock(&self.parked).get(id).map(|p| {
            let h = p.incoming.header();
            pb::PartialStream {
                snapshot: h.snapshot.clone(),
                parent: h.parent.clone().unwrap_or_default(),
                received: p.incoming.received(),
                prefix_blake3: p.incoming.prefix_digest().to_vec(),
            }
        })
    }

    /// Discards parked streams older than [`PARKED_FOR`].
    pub fn expire(&self) {
        let expired: Vec<Parked> = {
            let mut parked = lock(&self.parked);
            let old: Vec<String> = parked
                .iter()
                .filter(|(_, p)| p.since.elapsed() > PARKED_FOR)
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| parked.remove(k)).collect()
        };
        // Dropped outside the lock: dropping removes the partial subvolume.
        dispose(expired);
    }
}

/// Drops what a discarded receive holds — it stops `btrfs receive` and deletes the
/// partial tree — on a blocking thread when called on the async runtime.
pub fn dispose<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

/// Replication status of every replica node of `rec`, as of now.
pub fn statuses(driver: &Driver, rec: &VolumeRecord) -> Vec<pb::ReplicaStatus> {
    let Some(spec) = &rec.replication else {
        // A one-shot `vol replicate` leaves acknowledgements without a schedule.
        return rec
            .replicas
            .iter()
            .map(|a| {
                let taken_at = rec.snapshot_taken_at(&a.snapshot).unwrap_or(0);
                pb::ReplicaStatus {
                    node_id: a.node_id.clone(),
                    snapshot: a.snapshot.clone(),
                    bytes_sent: a.bytes_sent,
                    acknowledged_at: a.acknowledged_at,
                    taken_at,
                    lag_seconds: volume_core::manager::now().saturating_sub(taken_at),
                    state: "manual".into(),
                    ..Default::default()
                }
            })
            .collect();
    };
    let now = volume_core::manager::now();
    spec.nodes
        .iter()
        .map(|node| {
            let ack = rec.replicas.iter().find(|a| &a.node_id == node);
            let taken_at = ack.and_then(|a| rec.snapshot_taken_at(&a.snapshot));
            let link = driver.replication.link(&rec.id, node);
            let since = taken_at.unwrap_or(rec.created_at);
            let lag_seconds = now.saturating_sub(since);
            let state = if link.diverged.is_some() {
                "diverged"
            } else if ack.is_none() && link.last_error.is_none() {
                "syncing"
            } else if link.last_error.is_some() || lag_seconds > 2 * spec.interval_secs + 5 {
                if link.in_flight {
                    "syncing"
                } else {
                    "degraded"
                }
            } else {
                "in sync"
            };
            pb::ReplicaStatus {
                node_id: node.clone(),
                snapshot: ack.map(|a| a.snapshot.clone()).unwrap_or_default(),
                bytes_sent: ack.map(|a| a.bytes_sent).unwrap_or(0),
                acknowledged_at: ack.map(|a| a.acknowledged_at).unwrap_or(0),
                state: state.into(),
                lag_seconds,
                lag_bytes: link.lag_bytes,
                last_error: link
                    .diverged
                    .clone()
                    .or(link.last_error.clone())
                    .unwrap_or_default(),
                taken_at: taken_at.unwrap_or(0),
            }
        })
        .collect()
}

/// The volume's health with its replication folded in: abnormal when a replica is
/// degraded or diverged.
pub fn health(driver: &Driver, rec: &VolumeRecord, base: VolumeHealth) -> VolumeHealth {
    if base.abnormal || rec.replication.is_none() {
        return base;
    }
    let bad: Vec<String> = statuses(driver, rec)
        .into_iter()
        .filter(|s| s.state == "degraded" || s.state == "diverged")
        .map(|s| {
            format!(
                "replica on {} is {} ({} s behind{}{})",
                s.node_id,
                s.state,
                s.lag_seconds,
                if s.last_error.is_empty() { "" } else { ": " },
                s.last_error
            )
        })
        .collect();
    if bad.is_empty() {
        base
    } else {
        VolumeHealth {
            abnormal: true,
            message: bad.join("; "),
        }
    }
}

/// Runs the replication schedule until `shutdown` resolves.
pub async fn run(driver: Arc<Driver>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let vols = {
            let manager = Arc::clone(&driver.manager);
            match blocking(move || manager.list(None, usize::MAX)).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "replication: list volumes");
                    continue;
                }
            }
        };
        let links: Vec<(String, pb::ReplicaStatus)> = vols
            .iter()
            .filter(|v| v.replication.is_some())
            .flat_map(|v| statuses(&driver, v).into_iter().map(|s| (v.id.clone(), s)))
            .collect();
        driver.metrics.set_replicas(&links);
        driver.replication.retain_links(
            &vols
                .iter()
                .filter(|v| v.replication.is_some())
                .map(|v| v.id.clone())
                .collect(),
        );
        driver.replication.expire();
        for vol in vols {
            if vol.replication.is_none() || vol.state != volume_core::VolumeState::Ready {
                continue;
            }
            if !lock(&driver.replication.busy).insert(vol.id.clone()) {
                continue;
            }
            let driver = Arc::clone(&driver);
            tokio::spawn(async move {
                let id = vol.id.clone();
                sync_volume(&driver, vol).await;
                lock(&driver.replication.busy).remove(&id);
            });
        }
    }
}

/// One round for one volume: a snapshot when the interval has passed, then every
/// replica node that does not hold the newest snapshot is brought to it.
async fn sync_volume(driver: &Arc<Driver>, vol: VolumeRecord) {
    let Some(spec) = vol.replication.clone() else {
        return;
    };
    let now = volume_core::manager::now();
    let mut newest = vol.replication_snapshots.last().cloned();
    if newest
        .as_ref()
        .is_none_or(|s| now.saturating_sub(s.taken_at) >= spec.interval_secs)
    {
        let manager = Arc::clone(&driver.manager);
        let id = vol.id.clone();
        match blocking(move || manager.take_replication_snapshot(&id)).await {
            Ok(s) => newest = Some(s),
            Err(e) => {
                tracing::warn!(volume.id = %vol.id, error = %e.message(), "replication snapshot failed");
                for node in &spec.nodes {
                    driver.replication.update(&vol.id, node, |l| {
                        l.last_error = Some(format!("snapshot failed: {}", e.message()));
                    });
                }
                return;
            }
        }
    }
    let Some(newest) = newest else { return };
    for node in &spec.nodes {
        let acked = vol
            .replicas
            .iter()
            .any(|a| &a.node_id == node && a.snapshot == newest.name);
        let link = driver.replication.link(&vol.id, node);
        let waiting = link.last_error.is_some()
            && link.last_attempt.is_some_and(|t| t.elapsed() < RETRY_AFTER);
        // Even a node that holds the newest snapshot is asked once per interval (and
        // first after a restart): it may have been promoted meanwhile.
        let check = link
            .last_attempt
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(spec.interval_secs));
        // A node still busy with an earlier stream (a long full sync) keeps it; the
        // other nodes and the snapshots go on without waiting for it.
        // A failed attempt is retried (after RETRY_AFTER) even when the node holds the
        // newest snapshot: the failure may be a newer generation to step down for.
        if (acked && !check && link.last_error.is_none()) || waiting || link.in_flight {
            continue;
        }
        let (driver, id, node, name) = (
            Arc::clone(driver),
            vol.id.clone(),
            node.clone(),
            newest.name.clone(),
        );
        driver
            .replication
            .update(&id, &node, |l| l.in_flight = true);
        tokio::spawn(async move {
            let result = sync_to(&driver, &id, &node, &name).await;
            driver.replication.update(&id, &node, |l| {
                l.in_flight = false;
                l.last_attempt = Some(Instant::now());
                match &result {
                    Ok(()) => {
                        l.last_error = None;
                        l.sending = None;
                    }
                    Err(e) => l.last_error = Some(e.message().to_string()),
                }
            });
            if let Err(e) = result {
                tracing::warn!(volume.id = %id, peer = %node, code = ?e.code(), error = %e.message(), "replication to peer failed");
            }
        });
    }
    let keep: Vec<String> = spec
        .nodes
        .iter()
        .filter_map(|n| driver.replication.link(&vol.id, n).sending)
        .collect();
    let manager = Arc::clone(&driver.manager);
    let id = vol.id.clone();
    if let Err(e) = blocking(move || manager.prune_replication(&id, &keep)).await
        && e.code() != tonic::Code::NotFound
    {
        tracing::warn!(volume.id = %vol.id, error = %e.message(), "prune replication snapshots");
    }
}

/// Brings replica node `node` of volume `id` to snapshot `name` (or finishes a
/// stream it holds half of), or steps down when it holds a newer generation.
async fn sync_to(driver: &Arc<Driver>, id: &str, node: &str, name: &str) -> Result<(), Status> {
    let mut client = driver
        .config
        .peers
        .connect(node)
        .await
        .map_err(|e| peer_status(&e))?;
    let state = client
        .replica_state(pb::ReplicaStateRequest {
            volume_id: id.to_string(),
        })
        .await?
        .into_inner();
    let vol = {
        let (manager, id) = (Arc::clone(&driver.manager), id.to_string());
        blocking(move || manager.get(&id)).await?
    };
    let generation = vol.generation.max(1);
    match state.role.as_str() {
        "primary" if state.generation > generation => {
            return step_down(driver, id, node, &state).await;
        }
        "primary" => {
            let msg = format!(
                "node {node} also holds volume {id} as primary (generation {}, this node {generation}): \
                 it steps down when it sees this newer generation",
                state.generation
            );
            driver
                .replication
                .update(id, node, |l| l.diverged = Some(msg.clone()));
            return Err(Status::failed_precondition(msg));
        }
        "replica" if state.generation > generation => {
            let msg = format!(
                "node {node} holds generation {} of volume {id}, newer than this node's {generation}: \
                 another node was promoted",
                state.generation
            );
            driver
                .replication
                .update(id, node, |l| l.diverged = Some(msg.clone()));
            return Err(Status::failed_precondition(msg));
        }
        _ => driver.replication.update(id, node, |l| l.diverged = None),
    }
    if state.snapshots.iter().any(|s| s == name) {
        record_ack(driver, id, node, name, 0).await;
        driver.replication.update(id, node, |l| l.lag_bytes = 0);
        return Ok(());
    }
    // A half-received stream of a snapshot this node still has: finish it.
    let (snap, resume) = match &state.partial {
        Some(p) => {
            let (manager, id2, p2, holds) = (
                Arc::clone(&driver.manager),
                id.to_string(),
                p.clone(),
                state.snapshots.clone(),
            );
            let out = blocking(move || manager.outgoing(&id2, &p2.snapshot, &holds)).await;
            match out {
                Ok(out) if out.parent.as_ref().map(|x| x.0.as_str()).unwrap_or("") == p.parent => {
                    (out, Some(p.clone()))
                }
                _ => (fresh(driver, id, name, &state.snapshots).await?, None),
            }
        }
        None => (fresh(driver, id, name, &state.snapshots).await?, None),
    };
    driver
        .replication
        .update(id, node, |l| l.sending = Some(snap.name.clone()));
    let answer = stream_to(driver, &mut client, node, &snap, resume).await?;
    record_ack(driver, id, node, &answer.snapshot, answer.bytes).await;
    driver.replication.update(id, node, |l| l.lag_bytes = 0);
    let parent = snap.parent.map(|p| p.0).unwrap_or_default();
    tracing::info!(volume.id = %id, peer = %node, snapshot = %answer.snapshot, parent = %parent, bytes = answer.bytes, "replicated");
    Ok(())
}

async fn fresh(
    driver: &Arc<Driver>,
    id: &str,
    name: &str,
    holds: &[String],
) -> Result<OutgoingSnapshot, Status> {
    let (manager, id, name, holds) = (
        Arc::clone(&driver.manager),
        id.to_string(),
        name.to_string(),
        holds.to_vec(),
    );
    blocking(move || manager.outgoing(&id, &name, &holds)).await
}

async fn record_ack(driver: &Arc<Driver>, id: &str, node: &str, snapshot: &str, bytes: u64) {
    let (manager, id2, node2, snap2) = (
        Arc::clone(&driver.manager),
        id.to_string(),
        node.to_string(),
        snapshot.to_string(),
    );
    // The peer holds the snapshot whether or not this is recorded: a failure here is
    // worth a warning, not a failed replication.
    if let Err(e) = blocking(move || manager.record_replica_ack(&id2, &node2, &snap2, bytes)).await
    {
        tracing::warn!(volume.id = %id, error = %e.message(), "replica acknowledgement not recorded");
    }
}

/// Steps down as primary of `id`: `node` holds a newer generation.
async fn step_down(
    driver: &Arc<Driver>,
    id: &str,
    node: &str,
    state: &pb::ReplicaStateResponse,
) -> Result<(), Status> {
    // Streams of this volume to other nodes hold its snapshots (btrfs refuses to
    // delete a subvolume being sent): step down once they have ended.
    let others_busy = lock(&driver.replication.links)
        .iter()
        .any(|((v, n), l)| v == id && n != node && l.in_flight);
    if others_busy {
        return Err(Status::unavailable(format!(
            "node {node} holds a newer generation of {id}; stepping down once the streams \
             to other nodes end"
        )));
    }
    let first = driver.replication.link(id, node).diverged.is_none();
    let (manager, id2, node2, generation, snaps) = (
        Arc::clone(&driver.manager),
        id.to_string(),
        node.to_string(),
        state.generation,
        state.snapshots.clone(),
    );
    match blocking(move || manager.step_down(&id2, &node2, generation, &snaps)).await {
        Ok(down) => {
            if first {
                driver.metrics.split_brain();
            }
            tracing::error!(volume.id = %id, new_primary = %node, snapshot.id = %down.snapshot_id, kept = ?down.kept, "split brain resolved: stepped down, divergent data kept in a snapshot");
            Ok(())
        }
        Err(e) => {
            if first {
                driver.metrics.split_brain();
            }
            let msg = e.message().to_string();
            driver
                .replication
                .update(id, node, |l| l.diverged = Some(msg.clone()));
            Err(e)
        }
    }
}

/// Sends `snap` to the peer (from `resume.received` when resuming) and returns its
/// answer.
async fn stream_to(
    driver: &Arc<Driver>,
    client: &mut crate::peer::AuthedPeerClient,
    node: &str,
    snap: &OutgoingSnapshot,
    resume: Option<pb::PartialStream>,
) -> Result<pb::ReceiveSnapshotResponse, Status> {
    let spec = snap.volume.replication.clone().unwrap_or_default();
    let header = pb::SnapshotHeader {
        volume_id: snap.volume.id.clone(),
        name: snap.volume.name.clone(),
        kind: snap.volume.kind.to_string(),
        fs_type: snap.volume.fs.map(|f| f.to_string()).unwrap_or_default(),
        capacity_bytes: snap.volume.capacity,
        snapshot: snap.name.clone(),
        parent: snap
            .parent
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default(),
        source_node_id: driver.config.node_id.clone(),
        generation: snap.volume.generation.max(1),
        taken_at: snap.taken_at,
        copies: spec.copies,
        interval_secs: spec.interval_secs,
        replica_nodes: spec.nodes.clone(),
        resume_offset: 0,
        stream_format: driver
            .manager
            .stream_format_of(&snap.volume)
            .as_str()
            .to_string(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
    let sending = {
        let (driver, snap, node) = (Arc::clone(driver), snap.clone(), node.to_string());
        tokio::task::spawn_blocking(move || send(&driver, &node, &snap, header, resume, &tx))
    };
    let answer = client.receive_snapshot(ReceiverStream::new(rx)).await;
    let sent = sending
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?;
    // A failed `btrfs send` explains the peer's "ended before its trailer".
    let sent = sent?;
    let answer = answer?.into_inner();
    if sent.is_none() {
        return Err(Status::internal("the peer stopped reading the stream"));
    }
    Ok(answer)
}

/// Reads the send stream into chunks on `tx`: the header, the data from the resume
/// point (after checking that the stream starts with what the peer holds), then the
/// trailer. `Ok(None)` when the peer stopped reading (its answer says why); an error
/// when `btrfs send` failed, in which case no trailer is sent and the peer keeps what
/// it got for a later resumption.
fn send(
    driver: &Driver,
    node: &str,
    snap: &OutgoingSnapshot,
    mut header: pb::SnapshotHeader,
    resume: Option<pb::PartialStream>,
    tx: &tokio::sync::mpsc::Sender<pb::SnapshotChunk>,
) -> Result<Option<u64>, Status> {
    let id = &snap.volume.id;
    let mut stream = driver
        .manager
        .send_stream(snap)
        .map_err(|e| to_status(&e))?;
    let mut hasher = blake3::Hasher::new();
    let mut length = 0u64;
    let mut buf = vec![0u8; MAX_CHUNK];
    if let Some(p) = resume {
        // Re-read (without sending) what the peer already has, and check it.
        let mut left = p.received;
        while left > 0 {
            let want = usize::try_from(left.min(MAX_CHUNK as u64)).unwrap_or(MAX_CHUNK);
            let n = read_full(&mut *stream, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            length += n as u64;
            left -= n as u64;
        }
        if left == 0 && hasher.clone().finalize().as_bytes().as_slice() == p.prefix_blake3 {
            header.resume_offset = p.received;
            tracing::info!(volume.id = %id, peer = %node, snapshot = %snap.name, offset = p.received, "resuming a cut-off stream");
        } else {
            // The stream differs from what the peer holds: start again.
            drop(stream);
            stream = driver
                .manager
                .send_stream(snap)
                .map_err(|e| to_status(&e))?;
            hasher = blake3::Hasher::new();
            length = 0;
            tracing::warn!(volume.id = %id, peer = %node, "cut-off stream does not match; sending it again in full");
        }
    }
    if tx
        .blocking_send(pb::SnapshotChunk {
            part: Some(Part::Header(header)),
        })
        .is_err()
    {
        return Ok(None);
    }
    loop {
        let filled = read_full(&mut *stream, &mut buf)?;
        if filled == 0 {
            break;
        }
        let chunk = buf[..filled].to_vec();
        hasher.update(&chunk);
        length += filled as u64;
        driver
            .replication
            .update(id, node, |l| l.lag_bytes = l.lag_bytes.max(length));
        if tx
            .blocking_send(pb::SnapshotChunk {
                part: Some(Part::Data(chunk)),
            })
            .is_err()
        {
            return Ok(None);
        }
    }
    stream.finish().map_err(|e| to_status(&e))?;
    let trailer = pb::SnapshotChunk {
        part: Some(Part::Trailer(pb::SnapshotTrailer {
            blake3: hasher.finalize().as_bytes().to_vec(),
            length,
        })),
    };
    if tx.blocking_send(trailer).is_err() {
        return Ok(None);
    }
    Ok(Some(length))
}

/// Fills `buf` from `r` as far as it goes; 0 at the end.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, Status> {
    volume_core::chunkdiff::fill(r, buf)
        .map_err(|e| Status::internal(format!("read the replication stream: {e}")))
}

/// Replicates `volume` (name or id) to configured peer `to` once, now (`vol
/// replicate`); returns what the peer acknowledged.
pub async fn replicate(
    driver: &Arc<Driver>,
    volume: &str,
    to: &str,
) -> Result<pb::ReplicateVolumeResponse, Status> {
    let mut client = driver
        .config
        .peers
        .connect(to)
        .await
        .map_err(|e| peer_status(&e))?;
    let vol = {
        let (manager, volume) = (Arc::clone(&driver.manager), volume.to_string());
        blocking(move || manager.resolve(&volume)).await?
    };
    let held = client
        .replica_state(pb::ReplicaStateRequest {
            volume_id: vol.id.clone(),
        })
        .await?
        .into_inner()
        .snapshots;
    let snap = {
        let (manager, id) = (Arc::clone(&driver.manager), vol.id.clone());
        blocking(move || manager.take_and_prepare(&id, &held)).await?
    };
    let answer = stream_to(driver, &mut client, to, &snap, None).await?;
    record_ack(driver, &vol.id, to, &answer.snapshot, answer.bytes).await;
    {
        // Keeps what a peer acknowledged (the next parent) and the newest.
        let (manager, id) = (Arc::clone(&driver.manager), vol.id.clone());
        if let Err(e) = blocking(move || manager.prune_replication(&id, &[])).await {
            tracing::warn!(volume.id = %vol.id, error = %e.message(), "prune replication snapshots");
        }
    }
    let parent = snap.parent.map(|p| p.0).unwrap_or_default();
    tracing::info!(volume.id = %vol.id, peer = %to, snapshot = %answer.snapshot, parent = %parent, bytes = answer.bytes, "replicated");
    Ok(pb::ReplicateVolumeResponse {
        snapshot: answer.snapshot,
        incremental: !parent.is_empty(),
        parent,
        bytes_sent: answer.bytes,
    })
}

/// Chooses `count` replica nodes among the configured peers, not in `exclude`:
/// those that answer, the most free pool space first. RESOURCE_EXHAUSTED when fewer
/// answer.
pub async fn place(
    driver: &Driver,
    count: usize,
    exclude: &[String],
) -> Result<Vec<String>, Status> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut candidates = Vec::new();
    let mut unreachable = Vec::new();
    for node in driver.config.peers.addrs.keys() {
        if exclude.contains(node) || node == &driver.config.node_id {
            continue;
        }
        let hello = async {
            let mut c = driver
                .config
                .peers
                .connect(node)
                .await
                .map_err(|e| peer_status(&e))?;
            c.hello(pb::HelloRequest {
                node_id: driver.config.node_id.clone(),
            })
            .await
        };
        match tokio::time::timeout(Duration::from_secs(5), hello).await {
            Ok(Ok(h)) => candidates.push((h.into_inner().available_bytes, node.clone())),
            Ok(Err(e)) => unreachable.push(format!("{node}: {}", e.message())),
            Err(_) => unreachable.push(format!("{node}: no answer in 5 s")),
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    if candidates.len() < count {
        return Err(Status::resource_exhausted(format!(
            "{count} replica node(s) needed, {} peer(s) answer{}",
            candidates.len(),
            if unreachable.is_empty() {
                String::new()
            } else {
                format!(" (not answering: {})", unreachable.join("; "))
            }
        )));
    }
    Ok(candidates.into_iter().take(count).map(|c| c.1).collect())
}

/// Tells replica nodes `nodes` to remove their copies of volume `id` (deleted here,
/// or no longer placed there), in the background. A node that cannot be reached
/// keeps its copy: the warning names the command that removes it.
pub fn drop_copies(driver: &Arc<Driver>, id: &str, generation: u64, nodes: Vec<String>) {
    for node in nodes {
        let (driver, id) = (Arc::clone(driver), id.to_string());
        tokio::spawn(async move {
            let asked = async {
                let mut c = driver
                    .config
                    .peers
                    .connect(&node)
                    .await
                    .map_err(|e| peer_status(&e))?;
                // A stream still being applied there holds the copy: wait it out.
                let mut tries = 0;
                loop {
                    let r = c
                        .drop_replica(pb::DropReplicaRequest {
                            volume_id: id.clone(),
                            generation,
                        })
                        .await;
                    match r {
                        Err(e) if e.code() == tonic::Code::Aborted && tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        other => return other,
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(30), asked).await {
                Ok(Ok(r)) => {
                    tracing::info!(volume.id = %id, peer = %node, removed = r.into_inner().removed, "replica dropped");
                }
                Ok(Err(e)) => {
                    tracing::warn!(volume.id = %id, peer = %node, error = %e.message(), "replica not dropped; remove it there with `vol replica rm {id}`");
                }
                Err(_) => {
                    tracing::warn!(volume.id = %id, peer = %node, "replica not dropped (no answer); remove it there with `vol replica rm {id}`");
                }
            }
        });
    }
}
