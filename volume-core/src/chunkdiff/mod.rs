//! Replication streams for pools that are not btrfs: the difference between two
//! read-only copies of a volume's directory, found by comparing them in 1 MiB chunks,
//! and applied on the replica to a copy of the parent it holds.
//!
//! A stream is `MAGIC` followed by records, each a little-endian `u32` length and a
//! JSON [`Op`]; a `Chunk` op is followed by its `len` data bytes. Ops come in this
//! order: deletions of what the parent has and the new tree has not (or has with
//! another type), then the new tree walked in sorted order (directories before their
//! entries), then `End` with the tree digest: blake3 over every entry's path, type,
//! mode, owner, size, content and link target. The receiver computes the same digest
//! over what it built and refuses the result if they differ, so a stream that applies
//! cleanly but wrongly is never taken for a good copy.
//!
//! Kept: regular files (sparse: zero chunks become holes), directories, symlinks,
//! hard links within the tree, device nodes and fifos, modes, owners, file mtimes.
//! Not kept: xattrs and directory mtimes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// First bytes of every chunk-diff stream.
pub const MAGIC: &[u8; 8] = b"STWCHNK1";
/// Comparison and transfer unit.
pub const CHUNK: usize = 1 << 20;
/// Largest JSON record accepted.
const MAX_RECORD: u32 = 64 << 10;

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The tree's root directory: its mode and owner (first in every stream).
    Root { mode: u32, uid: u32, gid: u32 },
    /// Remove `path` (and everything under it).
    Delete { path: String },
    /// A directory (created if missing).
    Dir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A regular file of `size` bytes: the parent's content at `path` kept (`base`)
    /// or empty, then the chunks that follow.
    File {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        base: bool,
    },
    /// `len` bytes at `offset` of the current file (the data follows the record).
    Chunk { offset: u64, len: u32 },
    /// Zeros (a hole) over `len` bytes at `offset` of the current file.
    Zero { offset: u64, len: u32 },
    /// The current file is complete: its modification time.
    FileEnd { mtime: i64, mtime_nsec: u32 },
    /// A symbolic link.
    Symlink {
        path: String,
        target: String,
        uid: u32,
        gid: u32,
    },
    /// A hard link to `target`, an earlier path of the stream.
    Link { path: String, target: String },
    /// A device node or fifo.
    Node {
        path: String,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    /// The end: the new tree's digest (hex).
    End { digest: String },
}

fn bad(msg: impl Into<String>) -> Error {
    Error::StreamMismatch(msg.into())
}

/// Entries of a tree, sorted so that a directory comes before what it holds.
fn walk(root: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    fn inner(root: &Path, rel: &Path, out: &mut Vec<(String, std::fs::Metadata)>) -> Result<()> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .ctx(|| format!("read {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("read {}", dir.display()))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta =
                std::fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
            let text = rel
                .to_str()
                .ok_or_else(|| Error::InvalidArgument(format!("{} is not UTF-8", path.display())))?
                .to_string();
            let is_dir = meta.is_dir();
            out.push((text, meta));
            if is_dir {
                inner(root, &rel, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    inner(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn kind(meta: &std::fs::Metadata) -> u32 {
    meta.mode() & libc::S_IFMT
}

/// Accumulates the tree digest.
struct Digest(blake3::Hasher);

impl Digest {
    fn new() -> Self {
        Digest(blake3::Hasher::new())
    }

    fn entry(&mut self, path: &str, meta: &std::fs::Metadata, extra: &[u8]) {
        let h = &mut self.0;
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&meta.mode().to_le_bytes());
        h.update(&meta.uid().to_le_bytes());
        h.update(&meta.gid().to_le_bytes());
        let size = if meta.is_file() { meta.size() } else { 0 };
        h.update(&size.to_le_bytes());
        h.update(&(extra.len() as u64).to_le_bytes());
        h.update(extra);
    }

    fn hex(self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// The content hash of a regular file, or the target of a symlink, or the device
/// number of a node: what [`Digest::entry`] adds beyond the metadata.
fn content(path: &Path, meta: &std::fs::Metadata) -> Result<Vec<u8>> {
    if meta.is_file() {
        let mut h = blake3::Hasher::new();
        let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
        h.update_reader(f)
            .ctx(|| format!("read {}", path.display()))?;
        Ok(h.finalize().as_bytes().to_vec())
    } else if meta.file_type().is_symlink() {
        let t = std::fs::read_link(path).ctx(|| format!("readlink {}", path.display()))?;
        Ok(t.as_os_str().as_encoded_bytes().to_vec())
    } else {
        Ok(meta.rdev().to_le_bytes().to_vec())
    }
}

/// The digest of the tree at `root`, as a stream's `End` carries it.
pub fn tree_digest(root: &Path) -> Result<String> {
    let mut d = Digest::new();
    let meta = std::fs::metadata(root).ctx(|| format!("stat {}", root.display()))?;
    d.entry("", &meta, &[]);
    for (rel, meta) in walk(root)? {
        let c = content(&root.join(&rel), &meta)?;
        d.entry(&rel, &meta, &c);
    }
    Ok(d.hex())
}

mod apply;
mod send;

pub use apply::apply;
pub use send::{fill, send};

#[cfg(test)]
mod tests;
