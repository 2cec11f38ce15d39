//! Volume parameters as a StorageClass (or `vol create -o`) gives them.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::model::{FsType, Layout, VolumeKind};

/// Parameter naming the storage kind.
pub const KIND: &str = "kind";
/// Parameter naming a loop volume's filesystem.
pub const FS_TYPE: &str = "fsType";
/// Prefix of parameters the Kubernetes external-provisioner adds; accepted and ignored.
pub const K8S_PREFIX: &str = "csi.storage.k8s.io/";
/// Parameter listing an image volume's layers, comma separated, bottom layer first.
pub const LAYERS: &str = "layers";
/// Parameter choosing an image volume's overlay back end (`kernel` or `fuse`).
pub const OVERLAY: &str = "overlay";
/// Parameter choosing how the volume's data sits on the node (default: the fastest
/// the pool offers for its kind); see [`Layout`].
pub const LAYOUT: &str = "layout";
/// Parameter: copies of the volume, the primary's included (1 = not replicated).
pub const REPLICAS: &str = "replicas";
/// Parameter: time between replication snapshots (`30s`, `5m`, `1h` or seconds).
pub const REPLICATION_INTERVAL: &str = "replicationInterval";
/// Replication interval when `replicationInterval` is not given, in seconds.
pub const DEFAULT_REPLICATION_INTERVAL: u64 = 30;
/// Most copies a volume may ask for.
pub const MAX_REPLICAS: u32 = 8;

/// Parses `replicas`: 1 to [`MAX_REPLICAS`].
pub fn parse_replicas(s: &str) -> Result<u32> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n),
        _ => Err(Error::InvalidArgument(format!(
            "{REPLICAS} {s:?} is not a number from 1 to {MAX_REPLICAS}"
        ))),
    }
}

/// Parses `replicationInterval` into seconds: a whole number with an optional unit
/// `s`, `m` or `h`; at least one second, at most a day.
pub fn parse_interval(s: &str) -> Result<u64> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale != 0 && n > 0 && n.saturating_mul(scale) <= 86_400 => Ok(n * scale),
        _ => Err(Error::InvalidArgument(format!(
            "{REPLICATION_INTERVAL} {s:?} is not a duration from 1s to 24h (e.g. 30s, 5m, 1h)"
        ))),
    }
}

/// The replication a volume asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Copies, the primary's included (at least 2).
    pub copies: u32,
    /// Seconds between replication snapshots.
    pub interval_secs: u64,
}

/// Which overlay implementation mounts an image volume's publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlayBackend {
    /// Kernel overlayfs (the default: its mounts survive a daemon restart).
    #[default]
    Kernel,
    /// The `stowage-overlay` FUSE filesystem, run as its own process.
    Fuse,
}

impl OverlayBackend {
    /// Parses the `overlay` parameter.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "kernel" => Ok(OverlayBackend::Kernel),
            "fuse" => Ok(OverlayBackend::Fuse),
            other => Err(Error::InvalidArgument(format!(
                "overlay {other:?} is not one of kernel, fuse"
            ))),
        }
    }

    /// The parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayBackend::Kernel => "kernel",
            OverlayBackend::Fuse => "fuse",
        }
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks the shape of one layer reference: a layer store key (`<hex>` or
/// `blake3:<hex>`) or an OCI digest (`sha256:<hex>`, a diff_id or blob digest).
fn check_layer_reference(r: &str) -> Result<()> {
    let hex = r
        .strip_prefix("blake3:")
        .or_else(|| r.strip_prefix("sha256:"))
        .unwrap_or(r);
    if is_hex64(hex) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "layer {r:?} is not a layer key (<hex> or blake3:<hex>) or sha256:<hex> digest"
        )))
    }
}

/// The layer store keys (64 hex digits each, bottom layer first) of an image volume
/// whose `layers` parameter was resolved to keys at creation.
pub fn layer_keys(parameters: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let list = parameters
        .get(LAYERS)
        .ok_or_else(|| Error::InvalidArgument("an image volume needs layers".into()))?;
    list.split(',')
        .map(|r| {
            let hex = r.strip_prefix("blake3:").unwrap_or(r);
            if is_hex64(hex) {
                Ok(hex.to_string())
            } else {
                Err(Error::InvalidArgument(format!(
                    "layer {r:?} is not a layer store key"
                )))
            }
        })
        .collect()
}

/// The overlay back end recorded in an image volume's parameters.
pub fn overlay_backend(parameters: &BTreeMap<String, String>) -> Result<OverlayBackend> {
    parameters
        .get(OVERLAY)
        .map_or(Ok(OverlayBackend::Kernel), |s| OverlayBackend::parse(s))
}

/// Validated volume parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    /// Storage kind (default `dir`).
    pub kind: VolumeKind,
    /// Filesystem for loop volumes; `None` for directories.
    pub fs: Option<FsType>,
    /// Image volumes: layer references as given, bottom layer first.
    pub layers: Vec<String>,
    /// Image volumes: the overlay back end.
    pub overlay: Option<OverlayBackend>,
    /// Replication, when `replicas` is above 1.
    pub replication: Option<Replication>,
    /// The layout asked for (`None`: the pool's default for the kind).
    pub layout: Option<Layout>,
    /// The parameters we understood, normalised, echoed as volume context.
    pub normalized: BTreeMap<String, String>,
}

impl VolumeParams {
    /// Parses parameters; `cap_fs_type` is the mount capability's fs_type, which is used
    /// when the parameters do not name one and must agree when they do.
    pub fn parse(params: &HashMap<String, String>, cap_fs_type: Option<&str>) -> Result<Self> {
        let mut kind = VolumeKind::Dir;
        let mut fs_param = None;
        let mut layers_param = None;
        let mut overlay_param = None;
        let mut replicas = 1;
        let mut interval = None;
        let mut layout = None;
        for (key, value) in params {
            match key.as_str() {
                KIND => kind = VolumeKind::parse(value)?,
                FS_TYPE => fs_param = Some(FsType::parse(value)?),
                LAYERS => layers_param = Some(value.as_str()),
                OVERLAY => overlay_param = Some(OverlayBackend::parse(value)?),
                REPLICAS => replicas = parse_replicas(value)?,
                REPLICATION_INTERVAL => interval = Some(parse_interval(value)?),
                LAYOUT => layout = Some(Layout::parse(value)?),
                k if k.starts_with(K8S_PREFIX) => {}
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown parameter {other:?} (known: {KIND}, {FS_TYPE}, {LAYERS}, \
                         {OVERLAY}, {REPLICAS}, {REPLICATION_INTERVAL}, {LAYOUT}, {K8S_PREFIX}*)"
                    )));
                }
            }
        }
        let mut layers = Vec::new();
        if kind == VolumeKind::Image {
            let list = layers_param.ok_or_else(|| {
                Error::InvalidArgument("kind=image needs layers=<key,...> (bottom first)".into())
            })?;
            for r in list.split(',').map(str::trim) {
                check_layer_reference(r)?;
                if layers.iter().any(|l| l == r) {
                    return Err(Error::InvalidArgument(format!("layer {r} is listed twice")));
                }
                layers.push(r.to_string());
            }
        } else if layers_param.is_some() || overlay_param.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{LAYERS} and {OVERLAY} apply only to kind=image"
            )));
        }
        let cap_fs = cap_fs_type
            .filter(|s| !s.is_empty())
            .map(FsType::parse)
            .transpose()?;
        let fs = match kind {
            VolumeKind::Image => {
                if fs_param.is_some() {
                    return Err(Error::InvalidArgument(
                        "fsType applies only to kind=loop (an image volume is an overlay)".into(),
                    ));
                }
                None
            }
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
        let overlay = (kind == VolumeKind::Image).then(|| overlay_param.unwrap_or_default());
        let replication = if replicas > 1 {
            if kind == VolumeKind::Image {
                return Err(Error::InvalidArgument(
                    "image volumes are not replicated: their layers are read-only and the \
                     writable layer belongs to one publication"
                        .into(),
                ));
            }
            let interval_secs = interval.unwrap_or(DEFAULT_REPLICATION_INTERVAL);
            normalized.insert(REPLICAS.to_string(), replicas.to_string());
            normalized.insert(
                REPLICATION_INTERVAL.to_string(),
                format!("{interval_secs}s"),
            );
            Some(Replication {
                copies: replicas,
                interval_secs,
            })
        } else {
            None
        };
        if let Some(o) = overlay {
            normalized.insert(LAYERS.to_string(), layers.join(","));
            normalized.insert(OVERLAY.to_string(), o.as_str().to_string());
        }
        if let Some(l) = layout {
            let fits = match kind {
                VolumeKind::Dir => matches!(
                    l,
                    Layout::BtrfsNocow | Layout::BtrfsSubvolume | Layout::Directory
                ),
                VolumeKind::Loop => matches!(l, Layout::HostImage | Layout::PoolImage),
                VolumeKind::Image => l == Layout::Overlay,
            };
            if !fits {
                return Err(Error::InvalidArgument(format!(
                    "layout {l} is not a layout of kind={kind}"
                )));
            }
            normalized.insert(LAYOUT.to_string(), l.as_str().to_string());
        }
        Ok(VolumeParams {
            kind,
            fs,
            layers,
            overlay,
            replication,
            layout,
            normalized,
        })
    }

    /// Replaces an image volume's layer references with the layer store keys they
    /// resolved to (64 hex digits each, same order).
    pub fn set_layer_keys(&mut self, keys: Vec<String>) {
        self.normalized.insert(LAYERS.to_string(), keys.join(","));
        self.layers = keys;
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
    fn replication_parameters_parse_and_normalise() {
        let p = VolumeParams::parse(
            &map(&[("replicas", "3"), ("replicationInterval", "2m")]),
            None,
        )
        .unwrap();
        assert_eq!(
            p.replication,
            Some(Replication {
                copies: 3,
                interval_secs: 120
            })
        );
        assert_eq!(p.normalized["replicationInterval"], "120s");
        let p = VolumeParams::parse(&map(&[("replicas", "2")]), None).unwrap();
        assert_eq!(p.replication.unwrap().interval_secs, 30);
        let p = VolumeParams::parse(&map(&[("replicas", "1")]), None).unwrap();
        assert_eq!(p.replication, None);
        assert!(!p.normalized.contains_key("replicas"));
        for bad in ["0", "9", "two", "-1"] {
            assert!(parse_replicas(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_interval("45").unwrap(), 45);
        assert_eq!(parse_interval("1h").unwrap(), 3600);
        for bad in ["0s", "2d", "s", "", "25h", "1.5m"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        let image = map(&[
            ("kind", "image"),
            ("layers", &"a".repeat(64)),
            ("replicas", "2"),
        ]);
        assert!(VolumeParams::parse(&image, None).is_err());
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

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn invalid(pairs: &[(&str, &str)]) -> String {
        match VolumeParams::parse(&map(pairs), None) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{pairs:?}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn image_volumes_take_layers_and_an_overlay_back_end() {
        let layers = format!("blake3:{K1},sha256:{K2}");
        let p = VolumeParams::parse(&map(&[("kind", "image"), ("layers", &layers)]), None).unwrap();
        assert_eq!(p.kind, VolumeKind::Image);
        assert_eq!(p.fs, None);
        assert_eq!(
            p.layers,
            vec![format!("blake3:{K1}"), format!("sha256:{K2}")]
        );
        assert_eq!(p.overlay, Some(OverlayBackend::Kernel));
        assert_eq!(p.normalized["overlay"], "kernel");
        assert_eq!(p.normalized["layers"], layers);
        // The capability's fs_type does not apply to an overlay and is not an error.
        let p = VolumeParams::parse(
            &map(&[("kind", "image"), ("layers", K1), ("overlay", "fuse")]),
            Some("ext4"),
        )
        .unwrap();
        assert_eq!(p.overlay, Some(OverlayBackend::Fuse));
        let mut p = p;
        p.set_layer_keys(vec![K1.to_string()]);
        assert_eq!(layer_keys(&p.normalized).unwrap(), vec![K1.to_string()]);
        assert_eq!(
            overlay_backend(&p.normalized).unwrap(),
            OverlayBackend::Fuse
        );
    }

    #[test]
    fn image_parameters_are_refused_where_they_do_not_apply() {
        assert!(invalid(&[("kind", "image")]).contains("needs layers"));
        assert!(
            invalid(&[("kind", "image"), ("layers", K1), ("fsType", "ext4")]).contains("fsType")
        );
        assert!(invalid(&[("kind", "image"), ("layers", "")]).contains("not a layer key"));
        assert!(
            invalid(&[("kind", "image"), ("layers", "sha256:abc")]).contains("not a layer key")
        );
        assert!(invalid(&[("kind", "image"), ("layers", "../../etc")]).contains("not a layer key"));
        assert!(invalid(&[("kind", "image"), ("layers", &format!("{K1},{K1}"))]).contains("twice"));
        assert!(
            invalid(&[("kind", "image"), ("layers", K1), ("overlay", "aufs")]).contains("overlay")
        );
        assert!(invalid(&[("kind", "dir"), ("layers", K1)]).contains("only to kind=image"));
        assert!(invalid(&[("kind", "loop"), ("overlay", "kernel")]).contains("only to kind=image"));
        assert!(invalid(&[("layers", K1)]).contains("only to kind=image"));
        // Unresolved digests are not layer store keys.
        let unresolved = BTreeMap::from([("layers".to_string(), format!("sha256:{K1}"))]);
        assert!(layer_keys(&unresolved).is_err());
    }
}
