//! Volume parameters as a StorageClass (or `vol create -o`) gives them.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::model::{FsType, VolumeKind};

/// Parameter naming the storage kind.
pub const KIND: &str = "kind";
/// Parameter naming a loop volume's filesystem.
pub const FS_TYPE: &str = "fsType";
/// Prefix of parameters the Kubernetes external-provisioner adds; accepted and ignored.
pub const K8S_PREFIX: &str = "csi.storage.k8s.io/";

/// Validated volume parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    /// Storage kind (default `dir`).
    pub kind: VolumeKind,
    /// Filesystem for loop volumes; `None` for directories.
    pub fs: Option<FsType>,
    /// The parameters we understood, normalised, echoed as volume context.
    pub normalized: BTreeMap<String, String>,
}

impl VolumeParams {
    /// Parses parameters; `cap_fs_type` is the mount capability's fs_type, which is used
    /// when the parameters do not name one and must agree when they do.
    pub fn parse(params: &HashMap<String, String>, cap_fs_type: Option<&str>) -> Result<Self> {
        let mut kind = VolumeKind::Dir;
        let mut fs_param = None;
        for (key, value) in params {
            match key.as_str() {
                KIND => kind = VolumeKind::parse(value)?,
                FS_TYPE => fs_param = Some(FsType::parse(value)?),
                k if k.starts_with(K8S_PREFIX) => {}
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown parameter {other:?} (known: {KIND}, {FS_TYPE}, {K8S_PREFIX}*)"
                    )));
                }
            }
        }
        let cap_fs = cap_fs_type
            .filter(|s| !s.is_empty())
            .map(FsType::parse)
            .transpose()?;
        let fs = match kind {
            VolumeKind::Dir => {
                if fs_param.is_some() {
                    return Err(Error::InvalidArgument(
                        "fsType applies only to kind=loop".into(),
                    ));
                }
                None
            }
            VolumeKind::Loop => match (fs_param, cap_fs) {
                (Some(p), Some(c)) if p != c => {
                    return Err(Error::InvalidArgument(format!(
                        "fsType parameter {p} disagrees with the capability's fs_type {c}"
                    )));
                }
                (Some(p), _) => Some(p),
                (None, Some(c)) => Some(c),
                (None, None) => Some(FsType::Ext4),
            },
        };
        let mut normalized = BTreeMap::new();
        normalized.insert(KIND.to_string(), kind.as_str().to_string());
        if let Some(fs) = fs {
            normalized.insert(FS_TYPE.to_string(), fs.as_str().to_string());
        }
        Ok(VolumeParams {
            kind,
            fs,
            normalized,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_to_dir() {
        let p = VolumeParams::parse(&HashMap::new(), None).unwrap();
        assert_eq!(p.kind, VolumeKind::Dir);
        assert_eq!(p.fs, None);
    }

    #[test]
    fn loop_defaults_to_ext4_and_honours_capability() {
        let p = VolumeParams::parse(&map(&[("kind", "loop")]), None).unwrap();
        assert_eq!(p.fs, Some(FsType::Ext4));
        let p = VolumeParams::parse(&map(&[("kind", "loop")]), Some("xfs")).unwrap();
        assert_eq!(p.fs, Some(FsType::Xfs));
        assert!(
            VolumeParams::parse(&map(&[("kind", "loop"), ("fsType", "ext4")]), Some("xfs"))
                .is_err()
        );
    }

    #[test]
    fn unknown_parameters_are_refused_but_k8s_ones_accepted() {
        assert!(matches!(
            VolumeParams::parse(&map(&[("colour", "blue")]), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(VolumeParams::parse(&map(&[("csi.storage.k8s.io/pvc/name", "x")]), None).is_ok());
        assert!(VolumeParams::parse(&map(&[("kind", "nbd")]), None).is_err());
        assert!(VolumeParams::parse(&map(&[("fsType", "xfs")]), None).is_err());
        assert!(VolumeParams::parse(&map(&[("kind", "loop"), ("fsType", "btrfs")]), None).is_err());
    }
}
