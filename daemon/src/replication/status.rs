//! What a volume's replication looks like from the primary: per replica node its
//! state and lag, and the volume's health including its replicas.

use stowage_proto::stowage::v1 as pb;
use volume_core::VolumeRecord;
use volume_core::model::VolumeHealth;

use crate::driver::Driver;

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
