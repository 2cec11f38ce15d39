//! The use cases on this node: staging a volume, publishing it to a workload (or an
//! inline ephemeral volume made for it), their inverses, its usage and health, and
//! growing its filesystem where it is staged.

use std::collections::HashMap;
use std::path::PathBuf;

use volume_core::VolumeRecord;
use volume_core::manager::node::{PublishOptions, StageOptions};
use volume_core::model::VolumeHealth;
use volume_core::model::VolumeUsage;

use super::{Caller, Result, Volumes};

impl Volumes {
    /// Stages volume `id` at `staging`.
    pub async fn stage(&self, id: &str, staging: PathBuf, opts: StageOptions) -> Result<()> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.stage(&id, &staging, &opts))
            .await
    }

    /// Unstages volume `id` from `staging`.
    pub async fn unstage(&self, id: &str, staging: PathBuf) -> Result<()> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.unstage(&id, &staging))
            .await
    }

    /// Publishes volume `id`, staged at `staging`, at `target`.
    pub async fn publish(
        &self,
        id: &str,
        staging: PathBuf,
        target: PathBuf,
        opts: PublishOptions,
    ) -> Result<()> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| {
            m.publish(&id, &staging, &target, &opts)
        })
        .await
    }

    /// Makes the inline ephemeral volume the CO calls `co_volume_id` from `context`
    /// (its image layers looked up in the layer store first) and publishes it at
    /// `target`; returns the volume made.
    pub async fn publish_ephemeral(
        &self,
        co_volume_id: &str,
        target: PathBuf,
        mut context: HashMap<String, String>,
        opts: PublishOptions,
    ) -> Result<VolumeRecord> {
        if let Some(list) = context.get(volume_core::params::LAYERS) {
            let refs: Vec<String> = list.split(',').map(|r| r.trim().to_string()).collect();
            let keys = self.layer_keys(refs).await?;
            context.insert(volume_core::params::LAYERS.to_string(), keys.join(","));
        }
        let id = co_volume_id.to_string();
        self.run(Caller::Orchestrator, move |m| {
            m.publish_ephemeral(&id, &target, &context, &opts)
        })
        .await
    }

    /// Unpublishes `volume_id` from `target`: an inline ephemeral volume (named by the
    /// CO's id, never one of ours) is removed with its last publication.
    pub async fn unpublish(&self, volume_id: &str, target: PathBuf) -> Result<()> {
        let id = volume_id.to_string();
        self.run(Caller::Orchestrator, move |m| {
            if !volume_core::manager::is_valid_id(&id) && m.find_ephemeral(&id)?.is_some() {
                m.unpublish_ephemeral(&id, &target)
            } else {
                m.unpublish(&id, &target)
            }
        })
        .await
    }

    /// The usage and health of volume `id`, published or staged at `path`.
    pub async fn stats(&self, id: &str, path: PathBuf) -> Result<(VolumeUsage, VolumeHealth)> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.stats(&id, &path))
            .await
    }

    /// Grows the filesystem of volume `id`, staged or published at `path`, to the
    /// volume's size; returns that size.
    pub async fn expand_on_node(&self, id: &str, path: PathBuf) -> Result<u64> {
        let id = id.to_string();
        self.run(Caller::Orchestrator, move |m| m.expand_on_node(&id, &path))
            .await
    }
}
