//! Merged directory listings and directory handles.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::attr::{DirEntry, Entry, FileKind};
use super::inode::{Ident, NodeState, ROOT_INO, UPPER_LAYER};
use super::{OverlayFs, whiteout};

/// One visible entry of a merged directory.
#[derive(Debug, Clone)]
pub(crate) struct Merged {
    pub name: OsString,
    pub kind: FileKind,
    pub ident: Ident,
}

fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else if ft.is_char_device() {
        FileKind::CharDevice
    } else if ft.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::File
    }
}

/// Reads one layer's directory, adding new visible names to `out` and this layer's
/// whiteouts to `hidden` (they hide names of the layers below).
fn read_layer(
    dir: &Path,
    layer: u32,
    seen: &mut HashSet<OsString>,
    hidden: &mut HashSet<OsString>,
    out: &mut Vec<Merged>,
) -> io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut whiteouts = Vec::new();
    for de in rd {
        let de = de?;
        let name = de.file_name();
        if whiteout::is_wh_name(&name) {
            let b = name.as_bytes();
            if &b[whiteout::WH_PREFIX.len()..] != b".wh..opq" {
                whiteouts.push(OsString::from(std::ffi::OsStr::from_bytes(
                    &b[whiteout::WH_PREFIX.len()..],
                )));
            }
            continue;
        }
        let ft = de.file_type()?;
        if ft.is_char_device() {
            let md = de.metadata()?;
            if whiteout::is_whiteout(&md) {
                whiteouts.push(name);
                continue;
            }
        }
        if seen.contains(&name) || hidden.contains(&name) {
            continue;
        }
        seen.insert(name.clone());
        out.push(Merged {
            name,
            kind: kind_of(ft),
            ident: (layer, de.ino()),
        });
    }
    hidden.extend(whiteouts);
    Ok(())
}

/// A directory handle: a snapshot of the listing, refreshed when read from offset 0.
#[derive(Debug)]
pub(crate) struct DirHandle {
    ino: u64,
    entries: Vec<DirEntry>,
}

#[derive(Debug, Default)]
pub(crate) struct DirHandles {
    map: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next: AtomicU64,
}

impl DirHandles {
    fn get(&self, fh: u64) -> io::Result<Arc<Mutex<DirHandle>>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| super::errno(libc::EBADF))
    }
}

impl OverlayFs {
    /// The visible entries of a directory, upper first, without `.` and `..`.
    pub(crate) fn list_merged(&self, st: &NodeState, rel: &Path) -> io::Result<Vec<Merged>> {
        let mut seen = HashSet::new();
        let mut hidden = HashSet::new();
        let mut out = Vec::new();
        if st.detached.is_some() {
            return Ok(out);
        }
        if st.upper {
            read_layer(
                &self.upper_at(rel),
                UPPER_LAYER,
                &mut seen,
                &mut hidden,
                &mut out,
            )?;
        }
        for &layer in &st.dir_lowers {
            read_layer(
                &self.lower_at(layer, rel),
                layer as u32 + 1,
                &mut seen,
                &mut hidden,
                &mut out,
            )?;
        }
        Ok(out)
    }

    fn snapshot_dir(&self, ino: u64) -> io::Result<Vec<DirEntry>> {
        let _t = self.read_tree();
        let (node, st, rel) = self.dir_node(ino)?;
        let parent_ino = st.parent.as_ref().map_or(ROOT_INO, |p| p.ino);
        let mut entries = vec![
            DirEntry {
                ino: node.ino,
                kind: FileKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: FileKind::Dir,
                name: "..".into(),
            },
        ];
        for m in self.list_merged(&st, &rel)? {
            entries.push(DirEntry {
                ino: self.idents.ino_for(m.ident),
                kind: m.kind,
                name: m.name,
            });
        }
        Ok(entries)
    }

    /// Opens directory `ino` for reading; returns a handle.
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        {
            let _t = self.read_tree();
            self.dir_node(ino)?;
        }
        // The listing is read when the kernel reads from offset 0.
        let entries = Vec::new();
        let fh = self.dirs.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.dirs
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(Mutex::new(DirHandle { ino, entries })));
        Ok(fh)
    }

    /// Feeds entries from `offset` on to `add(entry, next_offset)` until it answers
    /// `true` (buffer full). Reading from offset 0 again re-reads the directory.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> io::Result<()> {
        let h = self.dirs.get(fh)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 {
            let ino = h.ino;
            h.entries = self.snapshot_dir(ino)?;
        }
        for (i, e) in h.entries.iter().enumerate().skip(offset as usize) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    /// Like [`readdir`](Self::readdir), with each entry looked up: `add(entry, attrs,
    /// next_offset)`. Every entry but `.` and `..` counts one lookup, which is given
    /// back when `add` answers `true` (buffer full, entry not sent). Entries that
    /// vanished since the listing was read are skipped.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, &Entry, u64) -> bool,
    ) -> io::Result<()> {
        let h = self.dirs.get(fh)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let dir = h.ino;
        if offset == 0 {
            h.entries = self.snapshot_dir(dir)?;
        }
        for (i, e) in h.entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if e.name == "." || e.name == ".." {
                // Not counted: the kernel takes no reference for these.
                let Ok((attr, ttl)) = self.getattr(e.ino) else {
                    continue;
                };
                let entry = Entry {
                    attr,
                    entry_ttl: ttl,
                    attr_ttl: ttl,
                };
                if add(e, &entry, next) {
                    break;
                }
                continue;
            }
            let Ok(entry) = self.lookup(dir, &e.name) else {
                continue;
            };
            if add(e, &entry, next) {
                self.forget(entry.attr.ino, 1);
                break;
            }
        }
        Ok(())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}
