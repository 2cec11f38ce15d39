//! The schedule: once a second, every replicated volume whose interval has passed
//! gets a replication snapshot and each replica node is brought to it; a peer with a
//! newer generation makes this node step down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stowage_proto::stowage::v1 as pb;
use volume_core::VolumeRecord;

use super::sender::sync_to;
use super::state::{RETRY_AFTER, TICK, lock};
use super::status::statuses;
use crate::driver::Driver;
use crate::grpc::rpc::blocking;

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
pub(super) async fn sync_volume(driver: &Arc<Driver>, vol: VolumeRecord) {
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
