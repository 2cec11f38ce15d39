//! Attaching a volume: to a node (ControllerPublish, a record the node's stage
//! checks), and into a running container's mount namespace.

use std::path::PathBuf;

use volume_core::VolumeRecord;

use super::{Caller, Result, Volumes};

impl Volumes {
    /// Records volume `id` as published to `node_id`, refusing more than
    /// `max_per_node` volumes on one node (0: no limit).
    pub async fn attach_to_node(
        &self,
        id: &str,
        node_id: &str,
        read_only: bool,
        max_per_node: i64,
    ) -> Result<()> {
        let (id, node_id) = (id.to_string(), node_id.to_string());
        self.run(Caller::Orchestrator, move |m| {
            m.attach(&id, &node_id, read_only, max_per_node)
        })
        .await
    }

    /// Forgets that volume `id` is published to `node_id` (all nodes when empty).
    pub async fn detach_from_node(&self, id: &str, node_id: &str) -> Result<()> {
        let (id, node_id) = (id.to_string(), node_id.to_string());
        self.run(Caller::Orchestrator, move |m| m.detach(&id, &node_id))
            .await
    }

    /// Mounts the volume `volume` names at `target` inside the mount namespace of
    /// process `pid`.
    pub async fn attach_into(
        &self,
        volume: &str,
        pid: i32,
        target: PathBuf,
        read_only: bool,
    ) -> Result<VolumeRecord> {
        let volume = volume.to_string();
        self.run(Caller::Person, move |m| {
            m.attach_into(&volume, pid, &target, read_only)
        })
        .await
    }

    /// Unmounts the volume `volume` names from `target` inside process `pid`.
    pub async fn detach_from(&self, volume: &str, pid: i32, target: PathBuf) -> Result<()> {
        let volume = volume.to_string();
        self.run(Caller::Person, move |m| {
            m.detach_from(&volume, pid, &target)
        })
        .await
    }
}
