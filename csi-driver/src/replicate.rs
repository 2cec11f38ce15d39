//! The primary's side of replication: ask the peer which snapshots it holds, take the
//! next replication snapshot (volume-core), and stream `btrfs send` (incremental from
//! the newest common snapshot, else full) to the peer's `ReceiveSnapshot` as a header,
//! data chunks of at most 1 MiB, and a trailer with the stream's length and blake3.

use std::io::Read;
use std::sync::Arc;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::snapshot_chunk::Part;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use volume_core::replication::OutgoingSnapshot;

use crate::driver::Driver;
use crate::peer::MAX_CHUNK;
use crate::rpc::blocking;
use crate::status::{peer_status, to_status};

/// Replicates `volume` (name or id) to configured peer `to`; returns what the peer
/// acknowledged.
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
    let manager = Arc::clone(&driver.manager);
    let vol = {
        let (manager, volume) = (Arc::clone(&manager), volume.to_string());
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
        let (manager, id) = (Arc::clone(&manager), vol.id.clone());
        blocking(move || manager.take_replication_snapshot(&id, &held)).await?
    };
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
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
    tx.send(pb::SnapshotChunk {
        part: Some(Part::Header(header)),
    })
    .await
    .map_err(|_| Status::internal("stream channel closed"))?;
    let sending = {
        let (manager, snap) = (Arc::clone(&manager), snap.clone());
        tokio::task::spawn_blocking(move || send(&manager, &snap, &tx))
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
    {
        let (manager, id, to, acked, bytes) = (
            Arc::clone(&manager),
            vol.id.clone(),
            to.to_string(),
            answer.snapshot.clone(),
            answer.bytes,
        );
        // The peer holds the snapshot whether or not this is recorded: a failure here
        // is worth a warning, not a failed replication.
        if let Err(e) = blocking(move || manager.record_replica_ack(&id, &to, &acked, bytes)).await
        {
            tracing::warn!(volume.id = %vol.id, error = %e.message(), "replica acknowledgement not recorded");
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

/// Reads the send stream into chunks on `tx`, then the trailer. `Ok(None)` when the
/// peer stopped reading (its answer says why); an error when `btrfs send` failed, in
/// which case no trailer is sent and the peer discards what it got.
fn send(
    manager: &volume_core::VolumeManager,
    snap: &OutgoingSnapshot,
    tx: &tokio::sync::mpsc::Sender<pb::SnapshotChunk>,
) -> Result<Option<u64>, Status> {
    let mut stream = manager.send_stream(snap).map_err(|e| to_status(&e))?;
    let mut hasher = blake3::Hasher::new();
    let mut length = 0u64;
    loop {
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Status::internal(format!("read btrfs send stream: {e}")));
                }
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        length += filled as u64;
        if tx
            .blocking_send(pb::SnapshotChunk {
                part: Some(Part::Data(buf)),
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
