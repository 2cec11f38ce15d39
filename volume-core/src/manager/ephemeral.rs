//! Inline ephemeral volumes: created by NodePublish when the pod spec carries the
//! volume inline (`csi.storage.k8s.io/ephemeral=true` in the volume context), staged
//! in the daemon's own ephemeral directory, and deleted again by NodeUnpublish. The
//! CO's volume id is not one of ours, so the volume is found by a name derived from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manager::node::{PublishOptions, StageOptions};
use crate::manager::{CreateRequest, VolumeManager};
use crate::model::VolumeRecord;
use crate::params::{K8S_PREFIX, VolumeParams};
use crate::size::parse_size;

/// Volume-context key that marks an inline ephemeral volume.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Volume-context key giving an ephemeral volume's size (default 1 GiB).
pub const SIZE_KEY: &str = "size";

/// True when a NodePublish volume context asks for an inline ephemeral volume.
pub fn is_ephemeral(context: &HashMap<String, String>) -> bool {
    context.get(EPHEMERAL_KEY).is_some_and(|v| v == "true")
}

fn ephemeral_name(co_volume_id: &str) -> String {
    format!("ephemeral-{co_volume_id}")
}

impl VolumeManager {
    fn ephemeral_staging(&self, rec: &VolumeRecord) -> PathBuf {
        self.node.ephemeral_dir.join(&rec.id)
    }

    /// Creates (or finds), stages and publishes the inline volume the CO calls
    /// `co_volume_id` at `target`, with parameters from its volume context.
    pub fn publish_ephemeral(
        &self,
        co_volume_id: &str,
        target: &Path,
        context: &HashMap<String, String>,
        opts: &PublishOptions,
    ) -> Result<VolumeRecord> {
        let params: HashMap<String, String> = context
            .iter()
            .filter(|(k, _)| !k.starts_with(K8S_PREFIX) && k.as_str() != SIZE_KEY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let size = match context.get(SIZE_KEY) {
            Some(s) => parse_size(s)?,
            None => 0,
        };
        let params = VolumeParams::parse(&params, None)?;
        let mut req = CreateRequest::new(ephemeral_name(co_volume_id), size, 0, params);
        req.block = opts.block;
        let rec = self.create(&req)?;
        if !rec.ephemeral {
            let mut marked = rec.clone();
            marked.ephemeral = true;
            self.store.put(&marked)?;
        }
        let staging = self.ephemeral_staging(&rec);
        let stage = StageOptions {
            block: opts.block,
            ..Default::default()
        };
        let result = self
            .stage_from(
                &rec.id,
                &staging,
                &stage,
                crate::manager::node::Origin::Daemon,
            )
            .and_then(|()| self.publish(&rec.id, &staging, target, opts));
        if let Err(e) = result {
            // Nothing of an inline volume may outlive a failed publish.
            if let Err(cleanup) = self.teardown_ephemeral(&rec.id, target) {
                tracing::warn!(volume.id = %rec.id, error = %cleanup, "cleanup of failed ephemeral publish");
            }
            return Err(e);
        }
        self.get(&rec.id)
    }

    /// The ephemeral volume the CO calls `co_volume_id`, if there is one.
    pub fn find_ephemeral(&self, co_volume_id: &str) -> Result<Option<VolumeRecord>> {
        Ok(self
            .store
            .get_by_name::<VolumeRecord>(&ephemeral_name(co_volume_id))?
            .filter(|r| r.ephemeral))
    }

    /// Unpublishes, unstages and deletes an ephemeral volume.
    pub fn unpublish_ephemeral(&self, co_volume_id: &str, target: &Path) -> Result<()> {
        let Some(rec) = self.find_ephemeral(co_volume_id)? else {
            return Err(Error::VolumeNotFound(co_volume_id.to_string()));
        };
        self.teardown_ephemeral(&rec.id, target)
    }

    fn teardown_ephemeral(&self, id: &str, target: &Path) -> Result<()> {
        self.unpublish(id, target)?;
        let rec = self.get(id)?;
        if rec.publications.is_empty() {
            self.unstage(id, &self.ephemeral_staging(&rec))?;
            self.delete(id)?;
            tracing::info!(volume.id = %id, "removed ephemeral volume");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::manager::tests::fixture;

    #[test]
    fn inline_volume_lives_from_publish_to_unpublish() {
        let f = fixture(true);
        let target = f.dir.path().join("pod/vol");
        let ctx = HashMap::from([
            (EPHEMERAL_KEY.to_string(), "true".to_string()),
            (
                "csi.storage.k8s.io/pod.name".to_string(),
                "web-0".to_string(),
            ),
            ("kind".to_string(), "loop".to_string()),
            ("size".to_string(), "64MiB".to_string()),
        ]);
        assert!(is_ephemeral(&ctx));
        let rec = f
            .mgr
            .publish_ephemeral("csi-abc123", &target, &ctx, &PublishOptions::default())
            .unwrap();
        assert!(rec.ephemeral && rec.staging.is_some() && rec.publications.len() == 1);
        assert_eq!(rec.capacity, 64 << 20);
        // Publish again (kubelet retry): same volume, nothing new.
        let again = f
            .mgr
            .publish_ephemeral("csi-abc123", &target, &ctx, &PublishOptions::default())
            .unwrap();
        assert_eq!(again.id, rec.id);

        f.mgr.unpublish_ephemeral("csi-abc123", &target).unwrap();
        assert!(f.mgr.find_ephemeral("csi-abc123").unwrap().is_none());
        assert!(f.mgr.list(None, 10).unwrap().is_empty());
        assert!(f.fake.mounted().is_empty() && f.fake.attached().is_empty());
    }

    #[test]
    fn bad_inline_parameters_leave_nothing() {
        let f = fixture(true);
        let ctx = HashMap::from([
            (EPHEMERAL_KEY.to_string(), "true".to_string()),
            ("colour".to_string(), "red".to_string()),
        ]);
        let err = f
            .mgr
            .publish_ephemeral(
                "csi-x",
                &f.dir.path().join("t"),
                &ctx,
                &PublishOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(f.mgr.list(None, 10).unwrap().is_empty());
    }
}
