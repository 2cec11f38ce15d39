//! ControllerPublish/Unpublish: which node a volume is attached to. A volume lives in
//! this node's pool, so it can only be attached here; single-node access means one
//! attachment at a time, and a node takes at most its advertised number of volumes.

use crate::error::{Error, Result};
use crate::manager::VolumeManager;
use crate::model::{Attachment, VolumeRecord, VolumeState};

impl VolumeManager {
    /// Attaches volume `id` to `node_id`; repeating with the same options succeeds.
    /// `max_per_node` is the node's volume limit (0: none).
    pub fn attach(
        &self,
        id: &str,
        node_id: &str,
        read_only: bool,
        max_per_node: i64,
    ) -> Result<()> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        if node_id != self.node.node_id {
            return Err(Error::NodeNotFound(node_id.to_string()));
        }
        if let Some(a) = rec.attachments.iter().find(|a| a.node_id == node_id) {
            return if a.read_only == read_only {
                Ok(())
            } else {
                Err(Error::AttachConflict(id.to_string(), node_id.to_string()))
            };
        }
        if let Some(other) = rec.attachments.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {id} is attached to node {}",
                other.node_id
            )));
        }
        if max_per_node > 0 {
            let attached = self
                .store
                .list::<VolumeRecord>()?
                .iter()
                .filter(|v| v.state == VolumeState::Ready)
                .filter(|v| v.attachments.iter().any(|a| a.node_id == node_id))
                .count();
            if attached as i64 >= max_per_node {
                return Err(Error::AttachLimit {
                    node: node_id.to_string(),
                    max: max_per_node,
                });
            }
        }
        rec.attachments.push(Attachment {
            node_id: node_id.to_string(),
            read_only,
        });
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, node.id = %node_id, read_only, "attached");
        Ok(())
    }

    /// Detaches volume `id` from `node_id` (from every node when empty). A volume or
    /// attachment that does not exist is already detached.
    pub fn detach(&self, id: &str, node_id: &str) -> Result<()> {
        let _guard = self.claim(id)?;
        let mut rec = match self.get(id) {
            Ok(r) => r,
            Err(Error::VolumeNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let before = rec.attachments.len();
        rec.attachments
            .retain(|a| !node_id.is_empty() && a.node_id != node_id);
        if rec.attachments.len() != before {
            if (node_id.is_empty() || node_id == self.node.node_id) && rec.in_use() {
                return Err(Error::FailedPrecondition(format!(
                    "volume {id} is still staged or published on this node"
                )));
            }
            self.store.put(&rec)?;
            tracing::info!(volume.id = %id, node.id = %node_id, "detached");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::manager::node::StageOptions;
    use crate::manager::tests::{fixture, req};

    #[test]
    fn attach_rules() {
        let f = fixture(true);
        let a = f.mgr.create(&req("a", "dir", 1 << 20)).unwrap();
        let b = f.mgr.create(&req("b", "dir", 1 << 20)).unwrap();
        f.mgr.attach(&a.id, "node-1", false, 1).unwrap();
        f.mgr.attach(&a.id, "node-1", false, 1).unwrap();
        assert!(matches!(
            f.mgr.attach(&a.id, "node-1", true, 1),
            Err(Error::AttachConflict(..))
        ));
        assert!(matches!(
            f.mgr.attach(&a.id, "elsewhere", false, 1),
            Err(Error::NodeNotFound(_))
        ));
        assert!(matches!(
            f.mgr.attach(&b.id, "node-1", false, 1),
            Err(Error::AttachLimit { .. })
        ));
        assert!(matches!(
            f.mgr
                .attach("v-0123456789abcdef0123456789abcdef", "node-1", false, 0),
            Err(Error::VolumeNotFound(_))
        ));
        f.mgr.detach(&a.id, "node-1").unwrap();
        f.mgr.detach(&a.id, "node-1").unwrap();
        f.mgr
            .detach("v-0123456789abcdef0123456789abcdef", "node-1")
            .unwrap();
        f.mgr.attach(&b.id, "node-1", false, 1).unwrap();
    }

    #[test]
    fn stage_requires_attachment_and_detach_requires_unstage() {
        let f = fixture(true);
        let a = f.mgr.create(&req("a", "dir", 1 << 20)).unwrap();
        let staging = f.dir.path().join("s");
        let opts = StageOptions {
            require_attachment: true,
            ..Default::default()
        };
        assert!(matches!(
            f.mgr.stage(&a.id, &staging, &opts),
            Err(Error::FailedPrecondition(_))
        ));
        f.mgr.attach(&a.id, "node-1", false, 0).unwrap();
        f.mgr.stage(&a.id, &staging, &opts).unwrap();
        assert!(matches!(
            f.mgr.detach(&a.id, "node-1"),
            Err(Error::FailedPrecondition(_))
        ));
        f.mgr.unstage(&a.id, &staging).unwrap();
        f.mgr.detach(&a.id, "node-1").unwrap();
    }
}
