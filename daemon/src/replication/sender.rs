//! Bringing a replica node to a volume's newest replication snapshot: asking what it
//! holds, stepping down if it holds a newer generation, sending the stream
//! (incremental from the newest snapshot both hold, else full; resumed from the byte
//! the replica holds) and recording its acknowledgement.

use std::io::Read;
use std::sync::Arc;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::snapshot_chunk::Part;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use volume_core::replication::OutgoingSnapshot;

use super::state::lock;
use crate::driver::Driver;
use crate::grpc::rpc::blocking;
use crate::grpc::status::{peer_status, to_status};
use crate::replication::link::MAX_CHUNK;

/// Brings replica node `node` of volume `id` to snapshot `name` (or finishes a
/// stream it holds half of), or steps down when it holds a newer generation.
pub(super) async fn sync_to(
    driver: &Arc<Driver>,
    id: &str,
    node: &str,
    name: &str,
) -> Result<(), Status> {
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
/// Sends `snap` to the peer (from `resume.received` when resuming) and returns its
/// answer.
pub(super) async fn stream_to(
    driver: &Arc<Driver>,
    client: &mut crate::replication::link::AuthedPeerClient,
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
pub(super) fn send(
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
pub(super) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, Status> {
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
