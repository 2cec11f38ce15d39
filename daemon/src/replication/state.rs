//! Per-link replication state the schedule keeps and the status views show (state,
//! lag, last error), and the cut-off incoming streams kept to resume.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stowage_proto::stowage::v1 as pb;
use volume_core::replication::IncomingSnapshot;

/// How long after a failed attempt a link is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a replica keeps a cut-off stream ready to resume.
pub const PARKED_FOR: Duration = Duration::from_secs(600);
/// How often the schedule looks at the volumes.
pub(super) const TICK: Duration = Duration::from_secs(1);

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
    pub(super) links: Mutex<HashMap<(String, String), Link>>,
    parked: Mutex<HashMap<String, Parked>>,
    pub(super) busy: Mutex<HashSet<String>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    pub(super) fn update(&self, volume_id: &str, node_id: &str, f: impl FnOnce(&mut Link)) {
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
