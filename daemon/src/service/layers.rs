//! The layer store's use cases: importing a layer (a tarball as a stream, or an OCI
//! layout on this host), listing layers, and removing one no volume uses.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use layer_store::{ImportedLayer, LayerInfo, LayerKey, LayerStore};
use volume_core::VolumeRecord;

use super::{Caller, Error, Result, Volumes, blocking};

/// A layer after an import: what the store holds, and whether it was there already.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The stored layer.
    pub info: LayerInfo,
    /// The store held it before this import.
    pub deduplicated: bool,
}

/// The stored metadata of each imported layer.
fn infos(layers: &LayerStore, imported: &[ImportedLayer]) -> Result<Vec<Imported>> {
    imported
        .iter()
        .map(|l| {
            let info = layers
                .get(&l.key)?
                .ok_or_else(|| Error::Internal(format!("layer {} vanished after import", l.key)))?;
            Ok(Imported {
                info,
                deduplicated: l.deduplicated,
            })
        })
        .collect()
}

/// The volumes whose `layers` parameter names the layer `key` (by key, diff_id or blob
/// digest), as "name (id)".
pub fn volumes_using_layer(
    layers: &LayerStore,
    recs: &[VolumeRecord],
    key: &LayerKey,
) -> Vec<String> {
    recs.iter()
        .filter(|r| {
            r.parameters
                .get(volume_core::params::LAYERS)
                .is_some_and(|list| {
                    list.split(',').map(str::trim).any(|reference| {
                        matches!(layers.find(reference), Ok(Some(info)) if info.key == *key)
                    })
                })
        })
        .map(|r| format!("{} ({})", r.name, r.id))
        .collect()
}

impl Volumes {
    /// Imports the layers of the OCI image layout at `path`, a directory on this host.
    pub async fn import_oci_layout(&self, path: PathBuf) -> Result<Vec<Imported>> {
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "OCI layout path {} is not absolute",
                path.display()
            )));
        }
        let layers = Arc::clone(&self.driver.layers);
        blocking(move || {
            if !path.is_dir() {
                return Err(Error::NotFound(format!(
                    "OCI layout {} is not a directory on the daemon's host",
                    path.display()
                )));
            }
            let imported = layers.import_oci_layout(&path)?;
            infos(&layers, &imported)
        })
        .await
    }

    /// Imports one layer tarball (gzip, zstd or plain) read from `reader` as it comes.
    pub async fn import_tar(&self, reader: impl Read + Send + 'static) -> Result<Imported> {
        let layers = Arc::clone(&self.driver.layers);
        blocking(move || {
            let imported = layers.import_tar(reader)?;
            let mut out = infos(&layers, std::slice::from_ref(&imported))?;
            out.pop()
                .ok_or_else(|| Error::Internal("an import answered no layer".into()))
        })
        .await
    }

    /// Every stored layer.
    pub async fn layers(&self) -> Result<Vec<LayerInfo>> {
        let layers = Arc::clone(&self.driver.layers);
        blocking(move || Ok(layers.list()?)).await
    }

    /// Removes the layer `layer` names (key, diff_id or blob digest), unless a volume
    /// uses it.
    pub async fn remove_layer(&self, layer: &str) -> Result<()> {
        let recs = self
            .run(Caller::Person, |m| m.list(None, usize::MAX))
            .await?;
        let (layers, layer) = (Arc::clone(&self.driver.layers), layer.to_string());
        blocking(move || {
            let info = layers
                .find(&layer)?
                .ok_or_else(|| Error::NotFound(format!("layer {layer} not found")))?;
            let users = volumes_using_layer(&layers, &recs, &info.key);
            if !users.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "layer {} is used by volume {}; delete those volumes first",
                    info.key,
                    users.join(", ")
                )));
            }
            layers.remove(&info.key)?;
            Ok(())
        })
        .await
    }
}
