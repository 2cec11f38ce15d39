//! Mutable volume parameters (ControllerModifyVolume, VolumeAttributesClass):
//! `compression` (`none`, `zstd`, `lzo`, `zlib`) for directory volumes on a btrfs pool,
//! applied to the live subvolume so data written from then on is compressed;
//! `replicas` and `replicationInterval` of directory and loop volumes (any pool).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::manager::VolumeManager;
use crate::model::{ReplicationSpec, VolumeRecord};
use crate::params::{REPLICAS, REPLICATION_INTERVAL, parse_interval, parse_replicas};

pub use crate::mutable::{COMPRESSION, apply, compresses, validate};

impl VolumeManager {
    /// Changes mutable parameters of volume `id` on the live volume.
    pub fn modify(&self, id: &str, params: &BTreeMap<String, String>) -> Result<VolumeRecord> {
        self.modify_placed(id, params, &[])
    }

    /// The replica nodes volume `id` needs beyond those it has to satisfy
    /// `params` (a raised `replicas`): how many to choose, and those to avoid.
    pub fn replica_nodes_wanted(
        &self,
        id: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<(usize, Vec<String>)> {
        let rec = self.get(id)?;
        let have = rec
            .replication
            .as_ref()
            .map(|s| s.nodes.clone())
            .unwrap_or_default();
        let Some(copies) = params.get(REPLICAS) else {
            return Ok((0, have));
        };
        let want = parse_replicas(copies)? as usize - 1;
        Ok((want.saturating_sub(have.len()), have))
    }

    /// [`Self::modify`], with `new_nodes` to hold the copies a raised `replicas`
    /// adds (chosen by the caller, who knows the peers).
    pub fn modify_placed(
        &self,
        id: &str,
        params: &BTreeMap<String, String>,
        new_nodes: &[String],
    ) -> Result<VolumeRecord> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        validate(params, rec.kind, &self.pool)?;
        let replication = replication_after(&rec, params, new_nodes)?;
        apply(&self.pool, &mut rec, params)?;
        if rec.replication.is_some() && replication.is_none() {
            // No longer replicated: its replication snapshots have no use.
            self.release_replication(id)?;
            rec.replication_snapshots.clear();
        }
        rec.replication = replication;
        if let Some(spec) = &rec.replication {
            rec.replicas.retain(|a| spec.nodes.contains(&a.node_id));
        } else {
            rec.replicas.clear();
        }
        rec.mutable_parameters
            .extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, ?params, "modified volume");
        Ok(rec)
    }
}

/// The replication settings of `rec` once `params` are applied.
fn replication_after(
    rec: &VolumeRecord,
    params: &BTreeMap<String, String>,
    new_nodes: &[String],
) -> Result<Option<ReplicationSpec>> {
    let mut spec = rec.replication.clone();
    if let Some(v) = params.get(REPLICAS) {
        let copies = parse_replicas(v)?;
        if copies == 1 {
            spec = None;
        } else {
            let mut s = spec.unwrap_or(ReplicationSpec {
                copies,
                interval_secs: crate::params::DEFAULT_REPLICATION_INTERVAL,
                nodes: Vec::new(),
            });
            s.copies = copies;
            for n in new_nodes {
                if !s.nodes.contains(n) {
                    s.nodes.push(n.clone());
                }
            }
            let want = copies as usize - 1;
            if s.nodes.len() < want {
                return Err(Error::NoSpace(format!(
                    "{copies} copies need {want} replica nodes; {} are available",
                    s.nodes.len()
                )));
            }
            s.nodes.truncate(want);
            spec = Some(s);
        }
    }
    if let Some(v) = params.get(REPLICATION_INTERVAL) {
        match &mut spec {
            Some(s) => s.interval_secs = parse_interval(v)?,
            None => {
                return Err(Error::FailedPrecondition(format!(
                    "volume {} is not replicated: set {REPLICAS} above 1 first",
                    rec.id
                )));
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::error::Error;
    use crate::manager::tests::{fixture, req};

    fn params(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn compression_applies_to_dir_volumes_on_btrfs_only() {
        let f = fixture(true);
        let d = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        let rec = f.mgr.modify(&d.id, &params("compression", "zstd")).unwrap();
        assert_eq!(rec.mutable_parameters["compression"], "zstd");
        assert!(
            f.fake
                .calls()
                .iter()
                .any(|c| c.starts_with("set_compression") && c.ends_with("zstd"))
        );

        let l = f.mgr.create(&req("l", "loop", 64 << 20)).unwrap();
        assert!(matches!(
            f.mgr.modify(&l.id, &params("compression", "zstd")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.mgr.modify(&d.id, &params("compression", "gzip9")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.mgr.modify(&d.id, &params("XXX_FakeKey", "x")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.mgr.modify(
                "v-0123456789abcdef0123456789abcdef",
                &params("compression", "zstd")
            ),
            Err(Error::VolumeNotFound(_))
        ));
    }

    #[test]
    fn plain_pool_cannot_compress() {
        let f = fixture(false);
        let d = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        assert!(matches!(
            f.mgr.modify(&d.id, &params("compression", "zstd")),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn replication_settings_change_and_need_nodes_to_grow() {
        let f = fixture(true);
        let d = f.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        assert!(d.replication.is_none());
        // An interval alone on an unreplicated volume means nothing.
        assert!(matches!(
            f.mgr.modify(&d.id, &params("replicationInterval", "10s")),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(
            f.mgr
                .replica_nodes_wanted(&d.id, &params("replicas", "3"))
                .unwrap(),
            (2, vec![])
        );
        // Without nodes to place copies on, raising replicas is refused.
        assert!(matches!(
            f.mgr.modify(&d.id, &params("replicas", "3")),
            Err(Error::NoSpace(_))
        ));
        let rec = f
            .mgr
            .modify_placed(&d.id, &params("replicas", "3"), &["b".into(), "c".into()])
            .unwrap();
        let spec = rec.replication.unwrap();
        assert_eq!((spec.copies, spec.interval_secs), (3, 30));
        assert_eq!(spec.nodes, vec!["b".to_string(), "c".to_string()]);
        let rec = f
            .mgr
            .modify(&d.id, &params("replicationInterval", "2m"))
            .unwrap();
        assert_eq!(rec.replication.as_ref().unwrap().interval_secs, 120);
        let rec = f.mgr.modify(&d.id, &params("replicas", "2")).unwrap();
        assert_eq!(
            rec.replication.as_ref().unwrap().nodes,
            vec!["b".to_string()]
        );
        let rec = f.mgr.modify(&d.id, &params("replicas", "1")).unwrap();
        assert!(rec.replication.is_none());
        let p = fixture(false);
        let pd = p.mgr.create(&req("d", "dir", 1 << 20)).unwrap();
        let rec = p
            .mgr
            .modify_placed(&pd.id, &params("replicas", "2"), &["b".into()])
            .unwrap();
        assert_eq!(rec.replication.unwrap().nodes, vec!["b".to_string()]);
    }
}
