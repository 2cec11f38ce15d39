//! The replicas this node holds of other nodes' volumes: listing them, promoting one
//! to a volume of this node (failover), and removing one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use volume_core::VolumeRecord;
use volume_core::model::ReplicaRecord;

use super::{Caller, Result, Volumes};

/// How long a promotion waits for a stream being received to end.
const PROMOTE_WAIT: Duration = Duration::from_secs(10);

/// A replica and where its newest snapshot is.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    /// The replica.
    pub replica: ReplicaRecord,
    /// Its newest snapshot's tree, if it holds one.
    pub latest_path: Option<PathBuf>,
}

fn find(replicas: Vec<ReplicaRecord>, volume: &str) -> Option<ReplicaRecord> {
    replicas
        .into_iter()
        .find(|r| r.id == volume || r.name == volume)
}

impl Volumes {
    /// The replicas this node holds.
    pub async fn replicas(&self) -> Result<Vec<ReplicaView>> {
        self.run(Caller::Person, |m| {
            Ok(m.list_replicas()?
                .into_iter()
                .map(|r| {
                    let latest_path = r.snapshots.last().map(|s| {
                        m.replica_dir(&r.id)
                            .join(&s.name)
                            .join(volume_core::replication::SNAPSHOT_SUBVOLUME)
                    });
                    ReplicaView {
                        replica: r,
                        latest_path,
                    }
                })
                .collect())
        })
        .await
    }

    /// Promotes the replica `volume` names (id or name) to a volume of this node. A
    /// stream being received ends (and is kept to resume) when its sender is gone:
    /// this waits a moment for that, then drops what was kept, since a half-received
    /// stream is not part of the copy promoted.
    pub async fn promote(&self, volume: &str) -> Result<VolumeRecord> {
        let (driver, volume) = (Arc::clone(&self.driver), volume.to_string());
        // The wait is its own: a busy replica is tried again until PROMOTE_WAIT.
        self.run(Caller::Orchestrator, move |m| {
            let deadline = Instant::now() + PROMOTE_WAIT;
            loop {
                if let Ok(Some(r)) = m.list_replicas().map(|rs| find(rs, &volume)) {
                    drop(driver.replication.unpark(&r.id));
                }
                match m.promote(&volume) {
                    Err(volume_core::Error::Busy(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// Removes this node's replica `volume` names (id or name), with a stream kept
    /// to resume.
    pub async fn remove_replica(&self, volume: &str) -> Result<()> {
        let volume = volume.to_string();
        let id = self
            .run(Caller::Person, move |m| {
                find(m.list_replicas()?, &volume)
                    .map(|r| r.id)
                    .ok_or_else(|| volume_core::Error::VolumeNotFound(format!("replica {volume}")))
            })
            .await?;
        let mut parked = self.driver.replication.unpark(&id);
        self.run(Caller::Person, move |m| {
            drop(parked.take());
            m.remove_replica(&id, None)
        })
        .await?;
        Ok(())
    }
}
