//! Importing an OCI image layout directory: `oci-layout` and `index.json` → (nested
//! indexes) → the selected image manifest → its config and layers, bottom first.
//!
//! Every blob is checked against its descriptor (size and sha256) before anything is
//! unpacked, so a corrupt layout adds nothing to the store; each layer is checked again
//! while it streams (the file could change in between), and its uncompressed digest
//! must match the config's `rootfs.diff_ids` entry. An import that fails on a later
//! layer (say, a diff_id mismatch found only while unpacking) keeps the earlier layers:
//! each is complete and verified, and a retry reuses them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::digest::{sha256_digest, sha256_hex};
use super::error::{Error, Result};
use super::store::{Expected, ImportedLayer, LayerStore};

/// Largest JSON blob (index, manifest, config) read into memory.
const MAX_JSON: u64 = 4 << 20;
/// Deepest nesting of image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Which image of a layout to import. The default takes the first image manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSelector {
    /// The `org.opencontainers.image.ref.name` annotation (the tag) in `index.json`.
    pub reference: Option<String>,
    /// Platform OS, matched against the descriptor's platform, else the config's.
    pub os: Option<String>,
    /// Platform architecture, matched like `os`.
    pub architecture: Option<String>,
}

impl fmt::Display for ImageSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = &self.reference {
            parts.push(format!("reference {r:?}"));
        }
        if let Some(os) = &self.os {
            parts.push(format!("os {os:?}"));
        }
        if let Some(arch) = &self.architecture {
            parts.push(format!("architecture {arch:?}"));
        }
        if parts.is_empty() {
            f.write_str("any image")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[derive(Debug, Deserialize)]
struct LayoutMarker {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

struct Layout<'a> {
    dir: &'a Path,
}

impl Layout<'_> {
    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Layout {
            path: self.dir.to_owned(),
            reason: reason.into(),
        }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = sha256_hex(digest)?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<(File, PathBuf)> {
        let path = self.blob_path(&desc.digest)?;
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(self.error(format!("blob {} is missing", desc.digest)))
            }
            Err(e) => Err(Error::io("opening", path)(e)),
        }
    }

    /// Reads a small file whole, refusing one larger than [`MAX_JSON`].
    fn read_small(&self, mut file: File, path: &Path) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io("reading", path))?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(self.error(format!(
                "{} is larger than {MAX_JSON} bytes",
                path.display()
            )));
        }
        Ok(bytes)
    }

    fn parse<T: DeserializeOwned>(&self, bytes: &[u8], path: &Path) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a JSON blob, checking its size and digest first.
    fn read_json<T: DeserializeOwned>(&self, desc: &Descriptor) -> Result<T> {
        let (file, path) = self.open_blob(desc)?;
        let bytes = self.read_small(file, &path)?;
        check_blob(
            desc,
            bytes.len() as u64,
            &sha256_digest(&Sha256::digest(&bytes)),
        )?;
        self.parse(&bytes, &path)
    }

    /// Hashes a blob file (streaming) and checks it against its descriptor.
    fn verify_blob(&self, desc: &Descriptor) -> Result<()> {
        let (mut file, path) = self.open_blob(desc)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading", path)(e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        check_blob(desc, size, &sha256_digest(&hasher.finalize()))
    }

    /// Image manifest descriptors in order, nested indexes expanded in place.
    fn manifests(&self, index: Index, depth: usize, out: &mut Vec<Descriptor>) -> Result<()> {
        for desc in index.manifests {
            if INDEX_TYPES.contains(&desc.media_type.as_str()) {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(self.error("image indexes nested too deeply"));
                }
                let nested: Index = self.read_json(&desc)?;
                self.manifests(nested, depth + 1, out)?;
            } else if desc.media_type.is_empty()
                || MANIFEST_TYPES.contains(&desc.media_type.as_str())
            {
                out.push(desc);
            }
        }
        Ok(())
    }
}

fn check_blob(desc: &Descriptor, size: u64, digest: &str) -> Result<()> {
    if size != desc.size {
        return Err(Error::DigestMismatch {
            what: "blob size",
            expected: desc.size.to_string(),
            actual: size.to_string(),
        });
    }
    if digest != desc.digest {
        return Err(Error::DigestMismatch {
            what: "blob digest",
            expected: desc.digest.clone(),
            actual: digest.to_owned(),
        });
    }
    Ok(())
}

fn matches(want: &Option<String>, have: Option<&str>) -> bool {
    match (want, have) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    }
}

impl LayerStore {
    /// Imports the first image of an OCI image layout; returns its layers bottom first.
    pub fn import_oci_layout(&self, dir: impl AsRef<Path>) -> Result<Vec<ImportedLayer>> {
        self.import_oci_layout_with(dir, &ImageSelector::default())
    }

    /// Imports the image `selector` picks from an OCI image layout; returns its layers
    /// bottom first.
    pub fn import_oci_layout_with(
        &self,
        dir: impl AsRef<Path>,
        selector: &ImageSelector,
    ) -> Result<Vec<ImportedLayer>> {
        let layout = Layout { dir: dir.as_ref() };
        let marker_path = layout.dir.join("oci-layout");
        let marker = match File::open(&marker_path) {
            Ok(f) => layout.read_small(f, &marker_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(layout.error("no oci-layout file"));
            }
            Err(e) => return Err(Error::io("opening", marker_path)(e)),
        };
        let marker: LayoutMarker = layout.parse(&marker, &marker_path)?;
        if !marker.version.starts_with("1.") {
            return Err(layout.error(format!("unsupported layout version {}", marker.version)));
        }
        let index_path = layout.dir.join("index.json");
        let index = File::open(&index_path).map_err(Error::io("opening", &index_path))?;
        let mut index: Index =
            layout.parse(&layout.read_small(index, &index_path)?, &index_path)?;
        if let Some(reference) = &selector.reference {
            index
                .manifests
                .retain(|d| d.annotations.get(REF_NAME) == Some(reference));
        }
        let mut candidates = Vec::new();
        layout.manifests(index, 0, &mut candidates)?;

        let mut chosen = None;
        for desc in candidates {
            let platform = desc.platform.as_ref();
            if !matches(&selector.os, platform.map(|p| p.os.as_str()))
                || !matches(
                    &selector.architecture,
                    platform.map(|p| p.architecture.as_str()),
                )
            {
                continue;
            }
            let manifest: Manifest = layout.read_json(&desc)?;
            if let Some(t) = manifest.media_type.as_deref()
                && !MANIFEST_TYPES.contains(&t)
            {
                return Err(Error::UnsupportedMediaType(t.to_owned()));
            }
            let config: Config = layout.read_json(&manifest.config)?;
            if matches(&selector.os, config.os.as_deref())
                && matches(&selector.architecture, config.architecture.as_deref())
            {
                chosen = Some((manifest, config));
                break;
            }
        }
        let Some((manifest, config)) = chosen else {
            return Err(Error::NoMatchingManifest {
                path: layout.dir.to_owned(),
                selector: selector.to_string(),
            });
        };
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(layout.error(format!(
                "the manifest has {} layers but the config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        for desc in &manifest.layers {
            if !LAYER_TYPES.contains(&desc.media_type.as_str()) {
                return Err(Error::UnsupportedMediaType(desc.media_type.clone()));
            }
            layout.verify_blob(desc)?;
        }

        let mut imported = Vec::with_capacity(manifest.layers.len());
        for (desc, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let (file, _) = layout.open_blob(desc)?;
            let expected = Expected {
                digest: &desc.digest,
                size: desc.size,
                diff_id: Some(diff_id),
            };
            imported.push(self.import_blob(file, Some(&expected))?);
        }
        Ok(imported)
    }
}
