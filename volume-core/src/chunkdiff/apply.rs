//! Applying a chunk diff into a destination tree, every path kept beneath it.

use super::*;

/// `rel` joined to `root`, refused unless it is a plain relative path whose
/// directories exist under `root` as directories (never symlinks), so that nothing
/// a stream names can land outside `root`.
pub(super) fn beneath(root: &Path, rel: &str) -> Result<PathBuf> {
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

pub(super) fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).ctx(|| format!("remove {}", path.display()))
        }
        Ok(_) => std::fs::remove_file(path).ctx(|| format!("remove {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
    }
}

pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", path.display()))
}

pub(super) fn read_op(r: &mut impl Read) -> Result<Op> {
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
