//! Writing a chunk diff: the records that turn `parent` (or nothing) into `new`.

use super::*;

pub(super) struct Writer<W: Write> {
    pub(super) out: W,
}

impl<W: Write> Writer<W> {
    pub(super) fn op(&mut self, op: &Op) -> Result<()> {
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
