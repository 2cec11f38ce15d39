//! Where a volume's copies go (the peers with the most free space that answer) and
//! dropping copies from nodes that no longer hold one.

use std::sync::Arc;
use std::time::Duration;

use stowage_proto::stowage::v1 as pb;
use tonic::Status;

use crate::driver::Driver;
use crate::grpc::status::peer_status;

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
