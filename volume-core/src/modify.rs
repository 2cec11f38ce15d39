//! Mutable volume parameters (ControllerModifyVolume, VolumeAttributesClass):
//! `compression` (`none`, `zstd`, `lzo`, `zlib`) for directory volumes on a btrfs pool,
//! applied to the live subvolume so data written from then on is compressed.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::manager::VolumeManager;
use crate::model::{VolumeKind, VolumeRecord};
use crate::pool::{Pool, PoolBackend};

/// The compression parameter.
pub const COMPRESSION: &str = "compression";
const ALGORITHMS: [&str; 4] = ["none", "zstd", "lzo", "zlib"];

/// Checks that every parameter is one a volume of `kind` in `pool` can change.
pub fn validate(params: &BTreeMap<String, String>, kind: VolumeKind, pool: &Pool) -> Result<()> {
    for (key, value) in params {
        match key.as_str() {
            COMPRESSION => {
                if kind != VolumeKind::Dir || !matches!(pool.backend(), PoolBackend::Btrfs { .. }) {
                    return Err(Error::InvalidArgument(
                        "compression applies to directory volumes on a btrfs pool only \
                         (loop images are nodatacow, which btrfs cannot compress)"
                            .into(),
                    ));
                }
                if !ALGORITHMS.contains(&value.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "compression {value:?} is not one of {}",
                        ALGORITHMS.join(", ")
                    )));
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "mutable parameter {other:?} is not supported (supported: {COMPRESSION})"
                )));
            }
        }
    }
    Ok(())
}

/// Applies validated parameters to the volume's storage.
pub fn apply(pool: &Pool, rec: &VolumeRecord, params: &BTreeMap<String, String>) -> Result<()> {
    if let Some(algorithm) = params.get(COMPRESSION) {
        pool.set_compression(&rec.id, algorithm)?;
    }
    Ok(())
}

impl VolumeManager {
    /// Changes mutable parameters of volume `id` on the live volume.
    pub fn modify(&self, id: &str, params: &BTreeMap<String, String>) -> Result<VolumeRecord> {
        let _guard = self.claim(id)?;
        let mut rec = self.get(id)?;
        validate(params, rec.kind, &self.pool)?;
        apply(&self.pool, &rec, params)?;
        rec.mutable_parameters
            .extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.store.put(&rec)?;
        tracing::info!(volume.id = %id, ?params, "modified volume");
        Ok(rec)
    }
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
}
