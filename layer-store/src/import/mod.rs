//! Extracting one tar stream into a directory, entry by entry, with every path resolved
//! beneath the directory (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), so no entry
//! can land outside it or be written through a symlink an earlier entry made.
//!
//! How entries map to the tree:
//!
//! | tar entry | result |
//! |---|---|
//! | regular file (also contiguous, GNU sparse) | file with its data, mode, mtime/atime, xattrs; owner as root |
//! | directory | directory; mode and times applied in a final pass, deepest first, after its children |
//! | symlink | symlink with the target as given (never followed here); owner and times |
//! | hard link | `linkat` to an earlier non-directory entry of this layer, by its validated path |
//! | char/block device | `mknod` as root; skipped and counted when unprivileged (hard links to it too) |
//! | fifo | `mknod` |
//! | `.wh.NAME` | root: a 0/0 character device NAME (overlayfs whiteout); unprivileged: the `.wh.NAME` file is kept |
//! | `.wh..wh..opq` | the parent gets `trusted.overlay.opaque=y` (root) or `user.overlay.opaque=y` |
//!
//! A later entry replaces an earlier one of the same path (a directory merges into an
//! existing directory; a non-empty directory cannot be replaced by a non-directory). A
//! whiteout of a name this layer already holds is ignored (OCI: whiteouts apply to the
//! layers below only); an entry that follows a whiteout of its own name replaces it, and
//! a directory doing so is made opaque, since the whiteout said the lower one is gone.
//!
//! PAX `SCHILY.xattr.*` records become extended attributes. Unprivileged, only `user.*`
//! ones are kept; `trusted.overlay.*` and `user.overlay.*` are always dropped (only the
//! importer's own whiteout translation may set them, or a layer could forge overlay
//! redirects); `user.*` on symlinks is impossible on Linux and dropped. Dropped
//! attributes and skipped devices are counted in the layer's metadata.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use tar::EntryType;

use super::error::{Error, Result};
use super::meta::{Meta, Privilege};
use super::sys;
use super::tar_safety::{EntryPath, Name, WHITEOUT_PREFIX};

/// Counts gathered while extracting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Tar entries seen (PAX global headers excluded).
    pub entries: u64,
    /// Device nodes not created because the import was unprivileged.
    pub skipped_devices: u64,
    /// Extended attributes dropped (see the module documentation).
    pub skipped_xattrs: u64,
}

/// What one import may take of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// Bytes of file data one layer may write (holes are not written and not counted).
    pub max_bytes: u64,
    /// Free bytes the store's filesystem must keep: an entry that would leave less is
    /// refused before any of it is written.
    pub reserve_free: u64,
    /// A sparse entry may declare at most this many bytes per byte of data it holds
    /// (beyond [`SPARSE_SLACK`]).
    pub sparse_ratio: u64,
}

/// Bytes a sparse entry may declare whatever data it holds.
pub const SPARSE_SLACK: u64 = 1 << 30;

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_bytes: 8 << 30,
            reserve_free: 1 << 30,
            sparse_ratio: 1024,
        }
    }
}

/// Blocks of zeros this long, at this alignment in the file, are left as holes.
const HOLE_BLOCK: u64 = 4096;

/// Extracts entries into a directory; [`Extractor::finish`] applies directory metadata.
#[derive(Debug)]
pub struct Extractor {
    limits: ImportLimits,
    /// File data written so far.
    written: u64,
    root: OwnedFd,
    privilege: Privilege,
    /// Directories whose mode and times are applied at the end.
    dirs: Vec<(EntryPath, Meta)>,
    /// The `./` entry's metadata, for the tree's root.
    root_meta: Option<Meta>,
    /// Non-directory entries of this layer, the only valid hard link targets.
    linkable: HashSet<EntryPath>,
    /// Paths whited out by this layer (the whiteout is still on disk).
    whiteouts: HashSet<EntryPath>,
    /// Device nodes skipped (unprivileged); hard links to them are skipped too.
    skipped: HashSet<EntryPath>,
    /// The last parent directory opened, reused by its siblings.
    cache: Option<(EntryPath, OwnedFd)>,
    stats: ExtractStats,
    buf: Vec<u8>,
}

const COPY_BUF: usize = 256 * 1024;

fn extract_err(path: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Extract {
        path: path.to_owned(),
        source,
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl Extractor {
    /// `root` is an open (not `O_PATH`) descriptor of the empty directory to fill.
    pub fn new(root: OwnedFd, privilege: Privilege) -> Self {
        Extractor {
            limits: ImportLimits::default(),
            written: 0,
            root,
            privilege,
            dirs: Vec::new(),
            root_meta: None,
            linkable: HashSet::new(),
            whiteouts: HashSet::new(),
            skipped: HashSet::new(),
            cache: None,
            stats: ExtractStats::default(),
            buf: vec![0; COPY_BUF],
        }
    }

    /// Holds this extraction to `limits`.
    pub fn with_limits(mut self, limits: ImportLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Extracts one entry.
    pub fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = EntryPath::parse(&raw).map_err(|reason| Error::UnsafePath {
            path: shown.clone(),
            reason,
        })?;
        let invalid = |reason| Error::InvalidEntry {
            path: shown.clone(),
            reason,
        };
        match path.name_kind().map_err(invalid)? {
            Name::Opaque => return self.opaque(&path.parent(), &shown),
            Name::Whiteout(target) => {
                let target = target.to_owned();
                return self.whiteout(&path, &target, &shown);
            }
            Name::Plain => {}
        }
        let meta = Meta::read(&mut entry, &shown)?;
        // Old tars mark directories as regular files whose name ends in '/'.
        let is_dir = kind.is_dir() || (kind == EntryType::Regular && raw.ends_with(b"/"));
        if path.is_root() {
            if !is_dir {
                return Err(invalid("the layer root must be a directory"));
            }
            self.root_meta = Some(meta);
            return Ok(());
        }
        match kind {
            _ if is_dir => self.directory(&path, meta, &shown),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&mut entry, &path, meta, &shown)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid("symlink without a target"))?
                    .into_owned();
                self.symlink(&path, OsStr::from_bytes(&target), meta, &shown)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hard_link(&path, target, &shown)
            }
            EntryType::Fifo => self.special(&path, libc::S_IFIFO, 0, meta, &shown),
            EntryType::Char | EntryType::Block => {
                // A fifo's device fields mean nothing (Python's tarfile leaves them
                // empty, which does not parse as a number); a device's are read.
                let header = entry.header();
                let major = header.device_major().map_err(extract_err(&shown))?;
                let minor = header.device_minor().map_err(extract_err(&shown))?;
                let dev = libc::makedev(major.unwrap_or(0), minor.unwrap_or(0));
                let file_type = if kind == EntryType::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                self.special(&path, file_type, dev, meta, &shown)
            }
            other => Err(Error::UnsupportedEntry {
                path: shown,
                kind: char::from(other.as_byte()),
            }),
        }
    }

    /// Applies the directories' modes and times, deepest first, then the root's; returns
    /// the counts.
    pub fn finish(mut self) -> Result<ExtractStats> {
        self.cache = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: of two entries for one directory, the later one is applied last.
        dirs.sort_by_key(|(path, _)| Reverse(path.depth()));
        for (path, meta) in &dirs {
            let shown = path.to_string();
            let dir = sys::open_beneath(
                self.root.as_fd(),
                &path.to_os_string(),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .map_err(|e| self.walk_error(e, &shown))?;
            set_mode_and_times(&File::from(dir), meta, &shown)?;
        }
        let root = File::from(self.root.try_clone().map_err(extract_err("."))?);
        match self.root_meta.take() {
            Some(meta) => {
                self.owner_and_xattrs(&root, &meta, ".")?;
                set_mode_and_times(&root, &meta, ".")?;
            }
            None => root
                .set_permissions(Permissions::from_mode(0o755))
                .map_err(extract_err("."))?,
        }
        Ok(self.stats)
    }

    /// Opens (creating missing components as 0755 directories) the directory `dir`, as an
    /// `O_PATH` descriptor. Reuses the cached parent; callers put it back with
    /// [`Extractor::keep_parent`].
    fn open_dir(&mut self, dir: &EntryPath, shown: &str) -> Result<OwnedFd> {
        if let Some((cached, fd)) = self.cache.take()
            && &cached == dir
        {
            return Ok(fd);
        }
        if dir.is_root() {
            return self.root.try_clone().map_err(extract_err(shown));
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let whited_out = |n| self.whiteouts.contains(&dir.prefix(n));
        if self.whiteouts.is_empty() || !(1..=dir.depth()).any(whited_out) {
            match sys::open_beneath(self.root.as_fd(), &dir.to_os_string(), flags, 0) {
                Ok(fd) => return Ok(fd),
                Err(e) if errno(&e) == libc::ENOENT => {}
                Err(e) => return Err(self.walk_error(e, shown)),
            }
        }
        // Component by component, creating what is missing. A component this layer
        // whited out becomes an opaque directory, as if its entry had been in the tar.
        let mut cur = self.root.try_clone().map_err(extract_err(shown))?;
        for (i, comp) in dir.components().iter().enumerate() {
            let walked = dir.prefix(i + 1);
            if self.whiteouts.contains(&walked) {
                self.replace_whiteout(cur.as_fd(), &walked, true, shown)?;
                self.clear_slot(cur.as_fd(), &walked, true, shown)?;
                sys::mkdirat(cur.as_fd(), comp, 0o755).map_err(extract_err(shown))?;
                let made = sys::open_beneath(cur.as_fd(), comp, libc::O_RDONLY, 0)
                    .map_err(|e| self.walk_error(e, shown))?;
                let key = OsStr::new(self.privilege.opaque_xattr());
                sys::fsetxattr(made.as_fd(), key, b"y").map_err(extract_err(shown))?;
            }
            cur = match sys::open_beneath(cur.as_fd(), comp, flags, 0) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => {
                    sys::mkdirat(cur.as_fd(), comp, 0o755).map_err(extract_err(shown))?;
                    sys::open_beneath(cur.as_fd(), comp, flags, 0)
                        .map_err(|e| self.walk_error(e, shown))?
                }
                Err(e) => return Err(self.walk_error(e, shown)),
            };
        }
        Ok(cur)
    }

    fn keep_parent(&mut self, dir: EntryPath, fd: OwnedFd) {
        self.cache = Some((dir, fd));
    }

    fn walk_error(&self, e: io::Error, shown: &str) -> Error {
        match errno(&e) {
            libc::ELOOP => Error::ThroughSymlink {
                path: shown.to_owned(),
            },
            libc::ENOTDIR => Error::InvalidEntry {
                path: shown.to_owned(),
                reason: "a parent is not a directory",
            },
            libc::EXDEV => Error::UnsafePath {
                path: shown.to_owned(),
                reason: "resolves outside the layer",
            },
            _ => Error::Extract {
                path: shown.to_owned(),
                source: e,
            },
        }
    }

    /// Makes room for a new entry `name` in `parent`. Returns true when a directory is
    /// there and the new entry is a directory too (they merge).
    fn clear_slot(
        &mut self,
        parent: BorrowedFd<'_>,
        path: &EntryPath,
        new_is_dir: bool,
        shown: &str,
    ) -> Result<bool> {
        let name = path.file_name().unwrap_or(OsStr::new("."));
        let existing = match sys::open_beneath(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => File::from(fd).metadata().map_err(extract_err(shown))?,
            Err(e) if errno(&e) == libc::ENOENT => return Ok(false),
            Err(e) => return Err(self.walk_error(e, shown)),
        };
        if existing.is_dir() {
            if new_is_dir {
                return Ok(true);
            }
            // The replaced directory's pending metadata goes with it.
            self.dirs.retain(|(p, _)| p != path);
            sys::unlinkat(parent, name, true).map_err(|e| match errno(&e) {
                libc::ENOTEMPTY | libc::EEXIST => Error::InvalidEntry {
                    path: shown.to_owned(),
                    reason: "replaces a non-empty directory",
                },
                _ => Error::Extract {
                    path: shown.to_owned(),
                    source: e,
                },
            })?;
        } else {
            sys::unlinkat(parent, name, false).map_err(extract_err(shown))?;
            self.linkable.remove(path);
        }
        Ok(false)
    }

    /// Called before creating `path`: if this layer whited it out, the whiteout goes and
    /// (for a directory) the new entry becomes opaque. Returns whether it must be opaque.
    fn replace_whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        path: &EntryPath,
        is_dir: bool,
        shown: &str,
    ) -> Result<bool> {
        if !self.whiteouts.remove(path) {
            return Ok(false);
        }
        if self.privilege == Privilege::Unprivileged {
            let mut wh = WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
            sys::unlinkat(parent, OsStr::from_bytes(&wh), false).map_err(extract_err(shown))?;
        }
        // As root the whiteout is the device at `path` itself; clear_slot removes it.
        Ok(is_dir)
    }

    fn exists(&self, parent: BorrowedFd<'_>, name: &OsStr, shown: &str) -> Result<bool> {
        match sys::open_beneath(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == libc::ENOENT => Ok(false),
            Err(e) => Err(self.walk_error(e, shown)),
        }
    }

    fn whiteout(&mut self, path: &EntryPath, target: &OsStr, shown: &str) -> Result<()> {
        let dir = path.parent();
        let parent = self.open_dir(&dir, shown)?;
        let target_path = path.with_file_name(target);
        let already = self.whiteouts.contains(&target_path);
        // A name this layer holds wins over its whiteout: whiteouts hide lower layers only.
        if !already && !self.exists(parent.as_fd(), target, shown)? {
            match self.privilege {
                Privilege::Root => sys::mknodat(parent.as_fd(), target, libc::S_IFCHR, 0)
                    .map_err(extract_err(shown))?,
                Privilege::Unprivileged => {
                    let name = path.file_name().unwrap_or_default();
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW;
                    sys::open_beneath(parent.as_fd(), name, flags, 0o600)
                        .map_err(|e| self.walk_error(e, shown))?;
                }
            }
            self.whiteouts.insert(target_path);
        }
        self.keep_parent(dir, parent);
        Ok(())
    }

    fn opaque(&mut self, dir: &EntryPath, shown: &str) -> Result<()> {
        let fd = self.open_dir(dir, shown)?;
        let file = self.reopen_dir(dir, fd, shown)?;
        sys::fsetxattr(
            file.as_fd(),
            OsStr::new(self.privilege.opaque_xattr()),
            b"y",
        )
        .map_err(extract_err(shown))
    }

    /// An `O_PATH` directory descriptor cannot carry xattrs; this opens the directory
    /// for reading.
    fn reopen_dir(&self, dir: &EntryPath, fd: OwnedFd, shown: &str) -> Result<File> {
        if dir.is_root() {
            return Ok(File::from(fd));
        }
        drop(fd);
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        sys::open_beneath(self.root.as_fd(), &dir.to_os_string(), flags, 0)
            .map(File::from)
            .map_err(|e| self.walk_error(e, shown))
    }
}

/// Mode (set-id bits included, so after chown) and times of an open file or directory.
fn set_mode_and_times(file: &File, meta: &Meta, shown: &str) -> Result<()> {
    file.set_permissions(Permissions::from_mode(meta.mode))
        .map_err(extract_err(shown))?;
    sys::futimens(file.as_fd(), meta.atime, meta.mtime).map_err(extract_err(shown))
}

mod entries;
