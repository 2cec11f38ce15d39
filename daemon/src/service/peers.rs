//! What a peer asks of this node: its free space, what it holds of a volume, to drop
//! its copy, and to receive a replication stream (resumed where a cut-off one
//! stopped, kept to resume if this one is cut off too).

use std::sync::Arc;

use volume_core::ReplicaSnapshot;
use volume_core::replication::{Holding, IncomingHeader};

use super::{Caller, Error, Result, Volumes, blocking};

/// A part of a replication stream, as the transport passes it on.
#[derive(Debug)]
pub enum Incoming {
    /// Stream bytes.
    Data(Vec<u8>),
    /// The end: the stream's blake3 digest and length.
    Trailer(Vec<u8>, u64),
}

/// How a receive ended.
#[derive(Debug)]
pub enum Received {
    /// The snapshot is applied.
    Applied(ReplicaSnapshot),
    /// Cut off before its trailer (what arrived is kept to resume).
    Cut,
}

impl Volumes {
    /// The bytes this node's pool has free.
    pub async fn available(&self) -> Result<u64> {
        self.run(Caller::Orchestrator, |m| m.capacity().map(|u| u.available))
            .await
    }

    /// What this node holds of volume `id`.
    pub async fn holding(&self, id: &str) -> Result<Holding> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.holding(&id))
            .await
    }

    /// Drops this node's replica of volume `id` up to `generation` (a cut-off stream
    /// of it first); true when there was one.
    pub async fn drop_copy(&self, id: &str, generation: u64) -> Result<bool> {
        let mut parked = self.driver.replication.unpark(id);
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| {
            drop(parked.take());
            m.remove_replica(&id, Some(generation))
        })
        .await
    }

    /// Receives the stream `header` announces from `parts`: resumed at `offset` when a
    /// cut-off stream of the same snapshot and parent stopped exactly there (any other
    /// header discards what was kept; a resume with nothing to resume is
    /// FAILED_PRECONDITION). The stream commits when its trailer arrives and matches.
    /// The work runs on the blocking pool to its end even if the caller goes away, and
    /// keeps what arrived of a cut-off stream itself.
    pub async fn receive(
        &self,
        header: IncomingHeader,
        offset: u64,
        mut parts: tokio::sync::mpsc::Receiver<Incoming>,
    ) -> Result<Received> {
        let parked = self.driver.replication.unpark(&header.volume_id);
        let resumed = match (offset, parked) {
            (0, p) => {
                crate::replication::dispose(p);
                None
            }
            (n, Some(p))
                if p.received() == n
                    && p.header().snapshot == header.snapshot
                    && p.header().parent == header.parent =>
            {
                Some(p)
            }
            (n, p) => {
                crate::replication::dispose(p);
                return Err(Error::FailedPrecondition(format!(
                    "no cut-off stream of snapshot {} to resume at byte {n}",
                    header.snapshot
                )));
            }
        };
        let (manager, driver) = (Arc::clone(&self.driver.manager), Arc::clone(&self.driver));
        blocking(move || {
            let mut incoming = match resumed {
                Some(p) => p,
                None => manager.begin_receive(header)?,
            };
            while let Some(part) = parts.blocking_recv() {
                match part {
                    Incoming::Data(d) => incoming.write(&d)?,
                    Incoming::Trailer(digest, len) => {
                        return Ok(Received::Applied(incoming.commit(&digest, len)?));
                    }
                }
            }
            if incoming.received() > 0 {
                driver.replication.park(incoming);
            }
            Ok(Received::Cut)
        })
        .await
    }
}
