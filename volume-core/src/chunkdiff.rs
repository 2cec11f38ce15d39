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

struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    fn op(&mut self, op: &Op) -> Result<()> {
        let json = serde_json::to_vec(op).map_err(|e| bad(format!("encode: {e}")))?;
        self.out
            .write_all(&(json.len() as u32).to_le_bytes())
            .and_then(|()| self.out.write_all(&json))
            .ctx(|| "write stream".into())
    }

    fn data(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).ctx(|| "write stream".into())
    }
}

/// Reads up to `buf.len()` bytes from `r` (fewer only at its end), retrying
/// interrupted reads.
pub fn fill(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the stream that turns a copy of `parent` (or an empty directory) into
/// `new` to `out`.
pub fn send(new: &Path, parent: Option<&Path>, out: impl Write) -> Result<()> {
    let mut w = Writer {
        out: BufWriter::with_capacity(CHUNK + 4096, out),
    };
    w.data(MAGIC)?;
    let new_entries = walk(new)?;
    let old: HashMap<String, std::fs::Metadata> = match parent {
        Some(p) => walk(p)?.into_iter().collect(),
        None => HashMap::new(),
    };
    let new_kinds: HashMap<&str, u32> = new_entries
        .iter()
        .map(|(p, m)| (p.as_str(), kind(m)))
        .collect();
    let root = std::fs::metadata(new).ctx(|| format!("stat {}", new.display()))?;
    w.op(&Op::Root {
        mode: root.mode(),
        uid: root.uid(),
        gid: root.gid(),
    })?;
    // Deletions: the topmost path of each removed (or retyped) subtree. In sorted
    // order a subtree's paths follow its root directly.
    let mut deleted: Option<String> = None;
    let mut old_paths: Vec<&String> = old.keys().collect();
    old_paths.sort();
    for p in old_paths {
        if deleted.as_ref().is_some_and(|d| {
            p.strip_prefix(d.as_str())
                .is_some_and(|r| r.starts_with('/'))
        }) {
            continue;
        }
        if new_kinds.get(p.as_str()) != Some(&kind(&old[p])) {
            w.op(&Op::Delete { path: p.clone() })?;
            deleted = Some(p.clone());
        }
    }
    let mut digest = Digest::new();
    digest.entry("", &root, &[]);
    // Hard-linked files: the first path of each inode and its content hash, so later
    // names link to it without reading the data again.
    let mut links: HashMap<(u64, u64), (String, blake3::Hash)> = HashMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut old_buf = vec![0u8; CHUNK];
    for (rel, meta) in &new_entries {
        let path = new.join(rel);
        let ft = meta.file_type();
        if meta.is_dir() {
            w.op(&Op::Dir {
                path: rel.clone(),
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
            })?;
            digest.entry(rel, meta, &content(&path, meta)?);
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).ctx(|| format!("readlink {}", path.display()))?;
            let target = target
                .to_str()
                .ok_or_else(|| Error::InvalidArgument(format!("{} is not UTF-8", path.display())))?
                .to_string();
            w.op(&Op::Symlink {
                path: rel.clone(),
                target,
                uid: meta.uid(),
                gid: meta.gid(),
            })?;
            digest.entry(rel, meta, &content(&path, meta)?);
        } else if meta.is_file() {
            if meta.nlink() > 1
                && let Some((first, hash)) = links.get(&(meta.dev(), meta.ino()))
            {
                w.op(&Op::Link {
                    path: rel.clone(),
                    target: first.clone(),
                })?;
                digest.entry(rel, meta, hash.as_bytes());
                continue;
            }
            let base = old.get(rel).filter(|m| m.is_file());
            w.op(&Op::File {
                path: rel.clone(),
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                base: base.is_some(),
            })?;
            let mut f = BufReader::with_capacity(
                CHUNK,
                File::open(&path).ctx(|| format!("open {}", path.display()))?,
            );
            let mut o = match (base, parent) {
                (Some(_), Some(p)) => {
                    let op = p.join(rel);
                    Some(BufReader::with_capacity(
                        CHUNK,
                        File::open(&op).ctx(|| format!("open {}", op.display()))?,
                    ))
                }
                _ => None,
            };
            let mut hasher = blake3::Hasher::new();
            let mut offset = 0u64;
            loop {
                let n = fill(&mut f, &mut buf).ctx(|| format!("read {}", path.display()))?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                hasher.update(chunk);
                // What the receiver has here: the parent's bytes, zeros past its end.
                let m = match &mut o {
                    Some(o) => fill(o, &mut old_buf[..n]).ctx(|| "read parent".into())?,
                    None => 0,
                };
                old_buf[m..n].fill(0);
                if chunk != &old_buf[..n] {
                    let len = n as u32;
                    if chunk.iter().all(|&b| b == 0) {
                        w.op(&Op::Zero { offset, len })?;
                    } else {
                        w.op(&Op::Chunk { offset, len })?;
                        w.data(chunk)?;
                    }
                }
                offset += n as u64;
            }
            if offset != meta.size() {
                return Err(bad(format!("{} changed while being sent", path.display())));
            }
            let mtime = meta.mtime();
            w.op(&Op::FileEnd {
                mtime,
                mtime_nsec: meta.mtime_nsec() as u32,
            })?;
            let hash = hasher.finalize();
            digest.entry(rel, meta, hash.as_bytes());
            if meta.nlink() > 1 {
                links.insert((meta.dev(), meta.ino()), (rel.clone(), hash));
            }
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() {
            w.op(&Op::Node {
                path: rel.clone(),
                mode: meta.mode(),
                rdev: meta.rdev(),
                uid: meta.uid(),
                gid: meta.gid(),
            })?;
            digest.entry(rel, meta, &content(&path, meta)?);
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is a socket: not replicated",
                path.display()
            )));
        }
    }
    w.op(&Op::End {
        digest: digest.hex(),
    })?;
    w.out.flush().ctx(|| "write stream".into())
}

/// `rel` joined to `root`, refused unless it is a plain relative path whose
/// directories exist under `root` as directories (never symlinks), so that nothing
/// a stream names can land outside `root`.
fn beneath(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(format!("path {rel:?} is not a plain relative path")));
    }
    let mut at = root.to_path_buf();
    let parts: Vec<_> = p.components().collect();
    for c in &parts[..parts.len() - 1] {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(bad(format!("{rel:?}: {} is not a directory", at.display()))),
        }
    }
    Ok(root.join(p))
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).ctx(|| format!("remove {}", path.display()))
        }
        Ok(_) => std::fs::remove_file(path).ctx(|| format!("remove {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", path.display()))
}

fn read_op(r: &mut impl Read) -> Result<Op> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ctx(|| "read stream".into())?;
    let len = u32::from_le_bytes(len);
    if len > MAX_RECORD {
        return Err(bad(format!("record of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).ctx(|| "read stream".into())?;
    serde_json::from_slice(&json).map_err(|e| bad(format!("bad record: {e}")))
}

/// Applies a stream from `input` to `dest` (a copy of the stream's parent, or an
/// empty directory), then checks the result against the stream's digest.
pub fn apply(input: impl Read, dest: &Path) -> Result<()> {
    let mut r = BufReader::with_capacity(CHUNK + 4096, input);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ctx(|| "read stream".into())?;
    if &magic != MAGIC {
        return Err(bad("not a chunk-diff stream"));
    }
    let mut current: Option<(PathBuf, File)> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let op = read_op(&mut r)?;
        if !matches!(op, Op::Chunk { .. } | Op::Zero { .. } | Op::FileEnd { .. })
            && current.is_some()
        {
            return Err(bad("a file ended without FileEnd"));
        }
        match op {
            Op::Root { mode, uid, gid } => {
                chown(dest, uid, gid)?;
                std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o7777))
                    .ctx(|| format!("chmod {}", dest.display()))?;
            }
            Op::Delete { path } => remove_any(&beneath(dest, &path)?)?,
            Op::Dir {
                path,
                mode,
                uid,
                gid,
            } => {
                let p = beneath(dest, &path)?;
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&p)?;
                        std::fs::create_dir(&p).ctx(|| format!("create {}", p.display()))?;
                    }
                    Err(_) => std::fs::create_dir(&p).ctx(|| format!("create {}", p.display()))?,
                }
                chown(&p, uid, gid)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                    .ctx(|| format!("chmod {}", p.display()))?;
            }
            Op::File {
                path,
                mode,
                uid,
                gid,
                size,
                base,
            } => {
                let p = beneath(dest, &path)?;
                let keep = base
                    && std::fs::symlink_metadata(&p)
                        .map(|m| m.is_file())
                        .unwrap_or(false);
                if keep {
                    // A hard link of the parent's copy must not change with this file.
                    let m = std::fs::metadata(&p).ctx(|| format!("stat {}", p.display()))?;
                    if m.nlink() > 1 {
                        let tmp = p.with_file_name(format!(".stowage-unlink-{}", m.ino()));
                        std::fs::copy(&p, &tmp).ctx(|| format!("copy {}", p.display()))?;
                        std::fs::rename(&tmp, &p).ctx(|| format!("rename {}", tmp.display()))?;
                    }
                } else {
                    remove_any(&p)?;
                }
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(!keep)
                    .open(&p)
                    .ctx(|| format!("open {}", p.display()))?;
                f.set_len(size)
                    .ctx(|| format!("truncate {}", p.display()))?;
                chown(&p, uid, gid)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                    .ctx(|| format!("chmod {}", p.display()))?;
                current = Some((p, f));
            }
            Op::Chunk { offset, len } => {
                let (p, f) = current
                    .as_mut()
                    .ok_or_else(|| bad("chunk outside a file"))?;
                let len = len as usize;
                if len > CHUNK {
                    return Err(bad("chunk larger than 1 MiB"));
                }
                r.read_exact(&mut buf[..len]).ctx(|| "read stream".into())?;
                std::os::unix::fs::FileExt::write_all_at(f, &buf[..len], offset)
                    .ctx(|| format!("write {}", p.display()))?;
            }
            Op::Zero { offset, len } => {
                let (p, f) = current.as_mut().ok_or_else(|| bad("zero outside a file"))?;
                if len as usize > CHUNK {
                    return Err(bad("zero range larger than 1 MiB"));
                }
                let punched = nix::fcntl::fallocate(
                    &*f,
                    nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    offset as i64,
                    i64::from(len),
                );
                if punched.is_err() {
                    buf[..len as usize].fill(0);
                    std::os::unix::fs::FileExt::write_all_at(f, &buf[..len as usize], offset)
                        .ctx(|| format!("write {}", p.display()))?;
                }
            }
            Op::FileEnd { mtime, mtime_nsec } => {
                let (p, f) = current
                    .take()
                    .ok_or_else(|| bad("file end outside a file"))?;
                let when = std::time::UNIX_EPOCH
                    .checked_add(std::time::Duration::new(
                        mtime.max(0) as u64,
                        mtime_nsec.min(999_999_999),
                    ))
                    .ok_or_else(|| bad("file time out of range"))?;
                f.set_modified(when)
                    .ctx(|| format!("set mtime {}", p.display()))?;
            }
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => {
                let p = beneath(dest, &path)?;
                remove_any(&p)?;
                std::os::unix::fs::symlink(&target, &p)
                    .ctx(|| format!("symlink {}", p.display()))?;
                chown(&p, uid, gid)?;
            }
            Op::Link { path, target } => {
                let p = beneath(dest, &path)?;
                let t = beneath(dest, &target)?;
                remove_any(&p)?;
                std::fs::hard_link(&t, &p).ctx(|| format!("link {}", p.display()))?;
            }
            Op::Node {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                let p = beneath(dest, &path)?;
                remove_any(&p)?;
                let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777);
                nix::sys::stat::mknod(&p, kind, perm, rdev)
                    .map_err(|e| Error::io(format!("mknod {}", p.display()), e.into()))?;
                chown(&p, uid, gid)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                    .ctx(|| format!("chmod {}", p.display()))?;
            }
            Op::End { digest } => {
                let mut rest = [0u8; 1];
                if r.read(&mut rest).ctx(|| "read stream".into())? != 0 {
                    return Err(bad("data after the end of the stream"));
                }
                let got = tree_digest(dest)?;
                if got != digest {
                    return Err(bad(format!(
                        "the applied tree's digest {got} differs from the sender's {digest}"
                    )));
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn stream(new: &Path, parent: Option<&Path>) -> Vec<u8> {
        let mut out = Vec::new();
        send(new, parent, &mut out).unwrap();
        out
    }

    fn copy(src: &Path, dst: &Path) {
        let ok = std::process::Command::new("cp")
            .args(["-a"])
            .arg(src)
            .arg(dst)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    #[test]
    fn full_then_incremental_streams_rebuild_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let v1 = t.path().join("v1");
        std::fs::create_dir_all(v1.join("sub/deep")).unwrap();
        std::fs::write(v1.join("small"), b"hello").unwrap();
        let big: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(v1.join("sub/big"), &big).unwrap();
        std::fs::write(v1.join("gone"), b"bye").unwrap();
        std::fs::create_dir(v1.join("gonedir")).unwrap();
        std::fs::write(v1.join("gonedir/x"), b"x").unwrap();
        std::os::unix::fs::symlink("small", v1.join("link")).unwrap();
        std::fs::hard_link(v1.join("small"), v1.join("sub/deep/hard")).unwrap();
        // Sparse: a 64 MiB file with 1 MiB of data at 32 MiB.
        let sparse = File::create(v1.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; CHUNK], 32 << 20).unwrap();

        std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o750)).unwrap();
        // Full.
        let full = stream(&v1, None);
        assert!(
            full.len() < 6 * CHUNK,
            "zero chunks are not sent: {}",
            full.len()
        );
        let r1 = t.path().join("r1");
        std::fs::create_dir(&r1).unwrap();
        apply(full.as_slice(), &r1).unwrap();
        assert_eq!(tree_digest(&r1).unwrap(), tree_digest(&v1).unwrap());
        let root_mode = std::fs::metadata(&r1).unwrap().permissions().mode() & 0o7777;
        assert_eq!(root_mode, 0o750, "the root's mode travels");
        assert_eq!(std::fs::read(r1.join("sub/big")).unwrap(), big);
        assert_eq!(
            std::fs::read_link(r1.join("link")).unwrap(),
            Path::new("small")
        );
        assert_eq!(
            std::fs::metadata(r1.join("small")).unwrap().ino(),
            std::fs::metadata(r1.join("sub/deep/hard")).unwrap().ino()
        );
        let blocks = std::fs::metadata(r1.join("sparse")).unwrap().blocks();
        assert!(blocks * 512 < 8 << 20, "holes kept: {blocks} blocks");

        // Incremental: one chunk of big changed, a file removed, a dir removed, a
        // file turned into a directory, a new file.
        let v2 = t.path().join("v2");
        copy(&v1, &v2);
        let mut big2 = big.clone();
        big2[CHUNK + 5] ^= 0xff;
        std::fs::write(v2.join("sub/big"), &big2).unwrap();
        std::fs::remove_file(v2.join("gone")).unwrap();
        std::fs::remove_dir_all(v2.join("gonedir")).unwrap();
        std::fs::remove_file(v2.join("small")).unwrap();
        std::fs::create_dir(v2.join("small")).unwrap();
        std::fs::write(v2.join("new"), b"new").unwrap();
        let inc = stream(&v2, Some(&v1));
        assert!(
            inc.len() < CHUNK + 8192,
            "one changed chunk is sent, not the file: {}",
            inc.len()
        );
        let r2 = t.path().join("r2");
        copy(&r1, &r2);
        apply(inc.as_slice(), &r2).unwrap();
        assert_eq!(tree_digest(&r2).unwrap(), tree_digest(&v2).unwrap());
        assert_eq!(std::fs::read(r2.join("sub/big")).unwrap(), big2);
        assert!(!r2.join("gone").exists() && !r2.join("gonedir").exists());
        assert!(r2.join("small").is_dir());
        // The old hard link partner kept its content.
        assert_eq!(std::fs::read(r2.join("sub/deep/hard")).unwrap(), b"hello");
        // The parent copy is untouched.
        assert_eq!(tree_digest(&r1).unwrap(), tree_digest(&v1).unwrap());
    }

    #[test]
    fn a_wrong_base_or_a_hostile_path_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let v1 = t.path().join("v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("f"), vec![1u8; 100]).unwrap();
        let v2 = t.path().join("v2");
        copy(&v1, &v2);
        std::fs::write(v2.join("f"), vec![2u8; 100]).unwrap();
        let inc = stream(&v2, Some(&v1));
        // Applied to something that is not the parent: the digest catches it.
        let wrong = t.path().join("wrong");
        std::fs::create_dir(&wrong).unwrap();
        std::fs::write(wrong.join("f"), vec![9u8; 200]).unwrap();
        std::fs::write(wrong.join("extra"), b"x").unwrap();
        let err = apply(inc.as_slice(), &wrong).unwrap_err();
        assert!(matches!(err, Error::StreamMismatch(_)), "{err}");

        // Paths that climb out, or go through a symlink, are refused.
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        for (ops, what) in [
            (
                vec![Op::Delete {
                    path: "../outside".into(),
                }],
                "dotdot",
            ),
            (
                vec![
                    Op::Symlink {
                        path: "l".into(),
                        target: outside.display().to_string(),
                        uid: 0,
                        gid: 0,
                    },
                    Op::Dir {
                        path: "l/x".into(),
                        mode: 0o40755,
                        uid: 0,
                        gid: 0,
                    },
                ],
                "through a symlink",
            ),
            (
                vec![Op::Delete {
                    path: "/etc".into(),
                }],
                "absolute",
            ),
        ] {
            let mut s = MAGIC.to_vec();
            let mut w = Writer { out: &mut s };
            for op in &ops {
                w.op(op).unwrap();
            }
            let dest = t.path().join(format!("d-{}", what.len()));
            std::fs::create_dir(&dest).unwrap();
            let err = apply(s.as_slice(), &dest).unwrap_err();
            assert!(matches!(err, Error::StreamMismatch(_)), "{what}: {err}");
        }
        assert!(outside.exists());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // Out-of-range values are refused, not panics.
        let small_file = || Op::File {
            path: "f".into(),
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: 10,
            base: false,
        };
        for ops in [
            vec![
                small_file(),
                Op::Zero {
                    offset: 0,
                    len: 4 << 20,
                },
            ],
            vec![
                small_file(),
                Op::FileEnd {
                    mtime: i64::MAX,
                    mtime_nsec: u32::MAX,
                },
            ],
        ] {
            let mut s = MAGIC.to_vec();
            let mut w = Writer { out: &mut s };
            for op in &ops {
                w.op(op).unwrap();
            }
            let dest = t.path().join(format!("range-{}", ops.len() * 7 + s.len()));
            std::fs::create_dir(&dest).unwrap();
            // An error (the stream also ends without End), never a panic.
            assert!(apply(s.as_slice(), &dest).is_err());
        }
        // A truncated stream fails.
        let dest = t.path().join("trunc");
        std::fs::create_dir(&dest).unwrap();
        let full = stream(&v1, None);
        assert!(apply(&full[..full.len() - 3], &dest).is_err());
    }
}
