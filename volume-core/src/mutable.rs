//! The rules of mutable parameters, shared by create and ModifyVolume: which a volume
//! may change (`compression` for directory volumes on btrfs, `replicas` and
//! `replicationInterval`), whether they turn compression on, and applying compression
//! to the volume's storage.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::{Layout, VolumeKind, VolumeRecord};
use crate::params::{REPLICAS, REPLICATION_INTERVAL, parse_interval, parse_replicas};
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
            REPLICAS | REPLICATION_INTERVAL => {
                if key == REPLICAS {
                    parse_replicas(value)?;
                } else {
                    parse_interval(value)?;
                }
                if kind == VolumeKind::Image {
                    return Err(Error::InvalidArgument(format!(
                        "{key} applies to directory and loop volumes only"
                    )));
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "mutable parameter {other:?} is not supported (supported: {COMPRESSION}, \
                     {REPLICAS}, {REPLICATION_INTERVAL})"
                )));
            }
        }
    }
    Ok(())
}

/// Whether `params` turn compression on (an algorithm other than `none`).
pub fn compresses(params: &BTreeMap<String, String>) -> bool {
    params.get(COMPRESSION).is_some_and(|c| c != "none")
}

/// Applies validated parameters to the volume's storage. Compression makes new files
/// copy-on-write (btrfs cannot compress nodatacow data): the layout says so.
pub fn apply(pool: &Pool, rec: &mut VolumeRecord, params: &BTreeMap<String, String>) -> Result<()> {
    if let Some(algorithm) = params.get(COMPRESSION) {
        pool.set_compression(&rec.id, algorithm)?;
    }
    if compresses(params) && rec.kind == VolumeKind::Dir {
        rec.layout = Some(Layout::BtrfsSubvolume);
    }
    Ok(())
}
