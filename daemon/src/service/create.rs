//! Creating a volume: empty, restored from a snapshot or cloned from a volume; its
//! image layers looked up in the layer store, its replicas placed on peers.

use std::collections::{BTreeMap, HashMap};

use volume_core::{ContentSource, CreateRequest, VolumeKind, VolumeParams, VolumeRecord};

use super::{Caller, Error, Result, Volumes};

/// What a front door asks to create.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    /// The caller's name for it (creating the same name again answers the volume).
    pub name: String,
    /// At least this many bytes (0: the default size).
    pub required_bytes: u64,
    /// At most this many bytes (0: no limit).
    pub limit_bytes: u64,
    /// Its parameters (StorageClass parameters, `vol create -o`).
    pub parameters: HashMap<String, String>,
    /// Its mutable parameters (a VolumeAttributesClass). Replication settings among
    /// them count as parameters: they place copies.
    pub mutable_parameters: HashMap<String, String>,
    /// The filesystem a mount capability asks for, if any.
    pub fs_type: Option<String>,
    /// Where its first contents come from (a snapshot or volume id).
    pub source: Option<ContentSource>,
    /// It will be used as a raw block device.
    pub block: bool,
}

/// What a copy is made from, as a person names it.
#[derive(Debug, Clone)]
pub enum CopyOf {
    /// A volume (name or id).
    Volume(String),
    /// A snapshot (name or id).
    Snapshot(String),
}

impl Volumes {
    /// Creates the volume `new` describes.
    pub async fn create(&self, caller: Caller, new: NewVolume) -> Result<VolumeRecord> {
        let mut parameters = new.parameters;
        let mut mutable = new.mutable_parameters;
        for key in [
            volume_core::params::REPLICAS,
            volume_core::params::REPLICATION_INTERVAL,
        ] {
            if let Some(v) = mutable.remove(key) {
                parameters.insert(key.to_string(), v);
            }
        }
        let mut params = VolumeParams::parse(&parameters, new.fs_type.as_deref())?;
        if params.kind == VolumeKind::Image {
            let keys = self.layer_keys(params.layers.clone()).await?;
            params.set_layer_keys(keys);
        }
        let mut create = CreateRequest::new(new.name, new.required_bytes, new.limit_bytes, params);
        create.source = new.source;
        create.mutable_parameters = mutable.into_iter().collect::<BTreeMap<_, _>>();
        create.block = new.block;
        if let Some(r) = create.params.replication {
            create.replica_nodes =
                crate::replication::place(&self.driver, r.copies as usize - 1, &[])
                    .await
                    .map_err(Error::Peer)?;
        }
        self.run(caller, move |m| m.create(&create)).await
    }

    /// Creates volume `name` as a copy of `of`, of its kind and filesystem, at least
    /// as large as it (`capacity` 0: its size).
    pub async fn create_copy(
        &self,
        caller: Caller,
        name: &str,
        of: CopyOf,
        capacity: u64,
    ) -> Result<VolumeRecord> {
        let name = name.to_string();
        self.run(caller, move |m| {
            let (source, kind, fs, source_size) = match &of {
                CopyOf::Volume(v) => {
                    let src = caller.find(m, v)?;
                    (
                        ContentSource::Volume(src.id),
                        src.kind,
                        src.fs,
                        src.capacity,
                    )
                }
                CopyOf::Snapshot(s) => {
                    let snap = caller.find_snapshot(m, s)?;
                    let size = snap.size_bytes;
                    (ContentSource::Snapshot(snap.id), snap.kind, snap.fs, size)
                }
            };
            let capacity = match capacity {
                0 => source_size,
                c if c < source_size => {
                    return Err(volume_core::Error::OutOfRange(format!(
                        "capacity {c} bytes is smaller than the source's {source_size}"
                    )));
                }
                c => c,
            };
            let mut p = HashMap::from([("kind".to_string(), kind.to_string())]);
            if let Some(fs) = fs {
                p.insert("fsType".to_string(), fs.to_string());
            }
            let params = VolumeParams::parse(&p, None)?;
            let mut create = CreateRequest::new(name.clone(), capacity, 0, params);
            create.source = Some(source);
            m.create(&create)
        })
        .await
    }

    /// The layer store keys of `references` (keys, diff_ids or blob digests), in the
    /// same order. A layer not in the store is the caller's bad argument.
    pub async fn layer_keys(&self, references: Vec<String>) -> Result<Vec<String>> {
        let layers = std::sync::Arc::clone(&self.driver.layers);
        super::blocking(move || {
            references
                .iter()
                .map(|r| match layers.find(r) {
                    Ok(Some(info)) => Ok(info.key.as_str().to_string()),
                    Ok(None) => Err(Error::InvalidArgument(format!(
                        "layer {r} is not in the layer store (import it with vol layer import)"
                    ))),
                    Err(e) => Err(Error::Layers(e)),
                })
                .collect()
        })
        .await
    }
}
