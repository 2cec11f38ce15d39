//! Harness for the differential tests: scripted lower layers, the same scripted
//! operations on kernel overlayfs and on our FUSE overlay, and a log of observable
//! results to compare.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use fuse_overlay::overlay::{Backend, Layers, MountOptions, Overlay};

/// Panics (never skips) when not root: these tests mount filesystems.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the differential overlay tests need root (they mount kernel overlayfs and FUSE)"
    );
}

fn errname(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None => format!("{:?}", e.kind()),
    }
}

/// Lower layers built by a scripted setup.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
}

impl Fixture {
    pub fn new(n: usize) -> Self {
        let root = tempfile::Builder::new()
            .prefix("ovl-diff-")
            .tempdir()
            .expect("tempdir");
        let lowers = (0..n)
            .map(|i| {
                let p = root.path().join(format!("lower{i}"));
                fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        Fixture { root, lowers }
    }

    fn p(&self, layer: usize, path: &str) -> PathBuf {
        assert!(
            !path.starts_with('/') && !path.is_empty(),
            "relative path wanted"
        );
        let p = self.lowers[layer].join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    pub fn file(&self, layer: usize, path: &str, content: &str) -> &Self {
        fs::write(self.p(layer, path), content).unwrap();
        self
    }

    pub fn bytes(&self, layer: usize, path: &str, content: &[u8]) -> &Self {
        fs::write(self.p(layer, path), content).unwrap();
        self
    }

    pub fn dir(&self, layer: usize, path: &str) -> &Self {
        fs::create_dir_all(self.p(layer, path)).unwrap();
        self
    }

    /// Kernel-style whiteout (0/0 character device).
    pub fn whiteout(&self, layer: usize, path: &str) -> &Self {
        nix::sys::stat::mknod(
            &self.p(layer, path),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        self
    }

    /// OCI whiteout file `.wh.NAME`.
    pub fn oci_whiteout(&self, layer: usize, dir: &str, name: &str) -> &Self {
        let d = self.lowers[layer].join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!(".wh.{name}")), "").unwrap();
        self
    }

    pub fn opaque(&self, layer: usize, path: &str) -> &Self {
        let p = self.p(layer, path);
        fs::create_dir_all(&p).unwrap();
        xattr_set(&p, "trusted.overlay.opaque", b"y");
        self
    }

    pub fn opaque_marker(&self, layer: usize, path: &str) -> &Self {
        let p = self.p(layer, path);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join(".wh..wh..opq"), "").unwrap();
        self
    }

    pub fn symlink(&self, layer: usize, path: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.p(layer, path)).unwrap();
        self
    }

    pub fn hardlink(&self, layer: usize, src: &str, dst: &str) -> &Self {
        fs::hard_link(self.p(layer, src), self.p(layer, dst)).unwrap();
        self
    }

    pub fn fifo(&self, layer: usize, path: &str) -> &Self {
        nix::unistd::mkfifo(
            &self.p(layer, path),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        self
    }

    pub fn chown(&self, layer: usize, path: &str, uid: u32, gid: u32) -> &Self {
        std::os::unix::fs::lchown(self.p(layer, path), Some(uid), Some(gid)).unwrap();
        self
    }

    pub fn chmod(&self, layer: usize, path: &str, mode: u32) -> &Self {
        fs::set_permissions(self.p(layer, path), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn xattr(&self, layer: usize, path: &str, name: &str, value: &str) -> &Self {
        xattr_set(&self.p(layer, path), name, value.as_bytes());
        self
    }

    pub fn mtime(&self, layer: usize, path: &str, secs: i64) -> &Self {
        let t = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &self.p(layer, path),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        self
    }

    /// A fingerprint of every lower layer (to prove the overlays never write there).
    fn lowers_fingerprint(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.lowers {
            walk(l, Path::new(""), true, &mut out);
        }
        out
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

fn xattrs(path: &Path) -> Vec<(String, String)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let name_s = String::from_utf8_lossy(name).to_string();
        if name_s.starts_with("security.selinux") {
            continue;
        }
        let nc = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: `v` is valid for writes of its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), nc.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        let val = if m >= 0 {
            String::from_utf8_lossy(&v[..m as usize]).to_string()
        } else {
            "?".into()
        };
        out.push((name_s, val));
    }
    out.sort();
    out
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn kind(md: &fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chr"
    } else if ft.is_block_device() {
        "blk"
    } else {
        "file"
    }
}

/// One line per entry below `root`: kind, mode, owner, link count, size, content,
/// symlink target, xattrs. `with_times` adds mtimes (used for the lower layers).
fn walk(root: &Path, rel: &Path, with_times: bool, out: &mut Vec<String>) {
    let dir = root.join(rel);
    let mut names: Vec<_> = match fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name()).collect(),
        Err(e) => {
            out.push(format!("{}: readdir {}", rel.display(), errname(&e)));
            return;
        }
    };
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) => {
                out.push(format!("{}: lstat {}", r.display(), errname(&e)));
                continue;
            }
        };
        let k = kind(&md);
        let mut line = format!(
            "{} {k} {:o} {}:{}",
            r.display(),
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        );
        if k != "dir" {
            line.push_str(&format!(" nlink={}", md.nlink()));
        }
        match k {
            "file" => {
                let data = fs::read(&p).unwrap_or_default();
                line.push_str(&format!(" size={} data={:x}", md.size(), fnv(&data)));
            }
            "symlink" => line.push_str(&format!(" -> {}", fs::read_link(&p).unwrap().display())),
            "chr" | "blk" => line.push_str(&format!(" rdev={}", md.rdev())),
            _ => {}
        }
        if with_times && k != "dir" {
            line.push_str(&format!(" mtime={}", md.mtime()));
        }
        for (n, v) in xattrs(&p) {
            line.push_str(&format!(" {n}={v}"));
        }
        out.push(line);
        if k == "dir" {
            walk(root, &r, with_times, out);
        }
    }
}

/// Operations on a mounted overlay, each recording its observable result.
pub struct Ctx {
    pub root: PathBuf,
    pub log: Vec<String>,
}

impl Ctx {
    pub fn p(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }

    fn rec<T>(&mut self, what: String, r: std::io::Result<T>, ok: impl FnOnce(T) -> String) {
        let line = match r {
            Ok(v) => format!("{what}: {}", ok(v)),
            Err(e) => format!("{what}: {}", errname(&e)),
        };
        self.log.push(line);
    }

    pub fn write(&mut self, path: &str, data: &str) {
        let r = fs::write(self.p(path), data);
        self.rec(format!("write {path}"), r, |_| "ok".into());
    }

    pub fn append(&mut self, path: &str, data: &str) {
        let r = fs::OpenOptions::new()
            .append(true)
            .open(self.p(path))
            .and_then(|mut f| f.write_all(data.as_bytes()));
        self.rec(format!("append {path}"), r, |_| "ok".into());
    }

    pub fn read(&mut self, path: &str) {
        let r = fs::read(self.p(path));
        self.rec(format!("read {path}"), r, |d| {
            if d.len() <= 64 {
                format!("{:?}", String::from_utf8_lossy(&d))
            } else {
                format!("{} bytes {:x}", d.len(), fnv(&d))
            }
        });
    }

    pub fn stat(&mut self, path: &str) {
        let r = fs::symlink_metadata(self.p(path));
        self.rec(format!("stat {path}"), r, |md| {
            let k = kind(&md);
            let mut s = format!("{k} {:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
            if k != "dir" {
                s.push_str(&format!(" nlink={} size={}", md.nlink(), md.size()));
            }
            s
        });
    }

    /// Like `stat`, with link count for directories too.
    pub fn stat_nlink(&mut self, path: &str) {
        let r = fs::symlink_metadata(self.p(path));
        self.rec(format!("stat+nlink {path}"), r, |md| {
            format!("{} nlink={}", kind(&md), md.nlink())
        });
    }

    pub fn stat_times(&mut self, path: &str) {
        let r = fs::symlink_metadata(self.p(path));
        self.rec(format!("times {path}"), r, |md| {
            format!(
                "atime={}.{} mtime={}.{}",
                md.atime(),
                md.atime_nsec(),
                md.mtime(),
                md.mtime_nsec()
            )
        });
    }

    pub fn ino(&self, path: &str) -> Option<u64> {
        fs::symlink_metadata(self.p(path)).ok().map(|m| m.ino())
    }

    pub fn ls(&mut self, path: &str) {
        let r = fs::read_dir(self.p(path)).and_then(|rd| {
            let mut v = rd
                .map(|e| e.map(|e| e.file_name().to_string_lossy().to_string()))
                .collect::<std::io::Result<Vec<_>>>()?;
            v.sort();
            Ok(v)
        });
        self.rec(format!("ls {path}"), r, |v| format!("{v:?}"));
    }

    /// Records whether readdir's d_ino of each entry equals its st_ino.
    pub fn ls_inos_consistent(&mut self, path: &str) {
        use std::os::unix::fs::DirEntryExt;
        let mut ok = true;
        for e in fs::read_dir(self.p(path)).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.ino() != e.ino() {
                ok = false;
            }
        }
        self.note(format!("inos consistent {path}: {ok}"));
    }

    pub fn mkdir(&mut self, path: &str) {
        let r = fs::create_dir(self.p(path));
        self.rec(format!("mkdir {path}"), r, |_| "ok".into());
    }

    pub fn mkdir_all(&mut self, path: &str) {
        let r = fs::create_dir_all(self.p(path));
        self.rec(format!("mkdir -p {path}"), r, |_| "ok".into());
    }

    pub fn rmdir(&mut self, path: &str) {
        let r = fs::remove_dir(self.p(path));
        self.rec(format!("rmdir {path}"), r, |_| "ok".into());
    }

    pub fn rm_rf(&mut self, path: &str) {
        let r = fs::remove_dir_all(self.p(path));
        self.rec(format!("rm -rf {path}"), r, |_| "ok".into());
    }

    pub fn unlink(&mut self, path: &str) {
        let r = fs::remove_file(self.p(path));
        self.rec(format!("unlink {path}"), r, |_| "ok".into());
    }

    pub fn rename(&mut self, from: &str, to: &str) {
        let r = fs::rename(self.p(from), self.p(to));
        self.rec(format!("rename {from} {to}"), r, |_| "ok".into());
    }

    pub fn rename_noreplace(&mut self, from: &str, to: &str) {
        let r = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &self.p(from),
            nix::fcntl::AT_FDCWD,
            &self.p(to),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(std::io::Error::from);
        self.rec(format!("rename-noreplace {from} {to}"), r, |_| "ok".into());
    }

    pub fn exchange(&mut self, a: &str, b: &str) {
        let r = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &self.p(a),
            nix::fcntl::AT_FDCWD,
            &self.p(b),
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(std::io::Error::from);
        self.rec(format!("exchange {a} {b}"), r, |_| "ok".into());
    }

    pub fn link(&mut self, from: &str, to: &str) {
        let r = fs::hard_link(self.p(from), self.p(to));
        self.rec(format!("link {from} {to}"), r, |_| "ok".into());
    }

    pub fn symlink(&mut self, target: &str, path: &str) {
        let r = std::os::unix::fs::symlink(target, self.p(path));
        self.rec(format!("symlink {target} {path}"), r, |_| "ok".into());
    }

    pub fn readlink(&mut self, path: &str) {
        let r = fs::read_link(self.p(path));
        self.rec(format!("readlink {path}"), r, |t| t.display().to_string());
    }

    pub fn chmod(&mut self, path: &str, mode: u32) {
        let r = fs::set_permissions(self.p(path), fs::Permissions::from_mode(mode));
        self.rec(format!("chmod {path} {mode:o}"), r, |_| "ok".into());
    }

    pub fn chown(&mut self, path: &str, uid: u32, gid: u32) {
        let r = std::os::unix::fs::lchown(self.p(path), Some(uid), Some(gid));
        self.rec(format!("chown {path} {uid}:{gid}"), r, |_| "ok".into());
    }

    pub fn truncate(&mut self, path: &str, len: u64) {
        let r = fs::OpenOptions::new()
            .write(true)
            .open(self.p(path))
            .and_then(|f| f.set_len(len));
        self.rec(format!("truncate {path} {len}"), r, |_| "ok".into());
    }

    pub fn utimes(&mut self, path: &str, atime: i64, mtime: i64) {
        let r = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &self.p(path),
            &nix::sys::time::TimeSpec::new(atime, 0),
            &nix::sys::time::TimeSpec::new(mtime, 123),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(std::io::Error::from);
        self.rec(format!("utimes {path}"), r, |_| "ok".into());
    }

    pub fn mkfifo(&mut self, path: &str) {
        let r = nix::unistd::mkfifo(
            &self.p(path),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map_err(std::io::Error::from);
        self.rec(format!("mkfifo {path}"), r, |_| "ok".into());
    }

    pub fn mknod_chr(&mut self, path: &str, major: u64, minor: u64) {
        let r = nix::sys::stat::mknod(
            &self.p(path),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(std::io::Error::from);
        self.rec(format!("mknod {path}"), r, |_| "ok".into());
    }

    pub fn setxattr(&mut self, path: &str, name: &str, value: &str) {
        let c = std::ffi::CString::new(self.p(path).as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a value valid for its length.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        let r = if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        self.rec(format!("setxattr {path} {name}"), r, |_| "ok".into());
    }

    pub fn getxattr(&mut self, path: &str, name: &str) {
        let c = std::ffi::CString::new(self.p(path).as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: `v` is valid for writes of its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        let r = if m >= 0 {
            Ok(String::from_utf8_lossy(&v[..m as usize]).to_string())
        } else {
            Err(std::io::Error::last_os_error())
        };
        self.rec(format!("getxattr {path} {name}"), r, |v| v);
    }

    pub fn removexattr(&mut self, path: &str, name: &str) {
        let c = std::ffi::CString::new(self.p(path).as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings.
        let rc = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
        let r = if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        self.rec(format!("removexattr {path} {name}"), r, |_| "ok".into());
    }

    pub fn listxattr(&mut self, path: &str) {
        let l: Vec<String> = xattrs(&self.p(path)).into_iter().map(|(n, _)| n).collect();
        self.note(format!("listxattr {path}: {l:?}"));
    }

    /// Writes through a shared mapping, then reads with read(2).
    pub fn mmap_write(&mut self, path: &str, offset: usize, data: &str) {
        use std::num::NonZeroUsize;
        let r = (|| -> std::io::Result<()> {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.p(path))?;
            let len = f.metadata()?.len() as usize;
            assert!(offset + data.len() <= len, "mmap write beyond the file");
            let n = NonZeroUsize::new(len).unwrap();
            // SAFETY: a fresh shared mapping of a file we hold open; nobody else maps it
            // in this process, and it is unmapped before the function returns.
            let ptr = unsafe {
                nix::sys::mman::mmap(
                    None,
                    n,
                    nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                    nix::sys::mman::MapFlags::MAP_SHARED,
                    &f,
                    0,
                )?
            };
            // SAFETY: the mapping is `len` bytes long and offset + data.len() <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    ptr.as_ptr().cast::<u8>().add(offset),
                    data.len(),
                );
                nix::sys::mman::msync(ptr, len, nix::sys::mman::MsFlags::MS_SYNC)?;
                nix::sys::mman::munmap(ptr, len)?;
            }
            Ok(())
        })();
        self.rec(format!("mmap-write {path}"), r, |_| "ok".into());
    }

    /// Opens `path` read-write, unlinks it, then writes and reads through the
    /// descriptor and fstats it.
    pub fn open_unlink_use(&mut self, path: &str) {
        let r = (|| -> std::io::Result<String> {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.p(path))?;
            fs::remove_file(self.p(path))?;
            let exists = self.p(path).exists();
            use std::io::Seek;
            f.seek(std::io::SeekFrom::End(0))?;
            f.write_all(b"+more")?;
            f.seek(std::io::SeekFrom::Start(0))?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            let md = f.metadata()?;
            Ok(format!(
                "exists={exists} content={s:?} nlink={} size={}",
                md.nlink(),
                md.size()
            ))
        })();
        self.rec(format!("open-unlink {path}"), r, |s| s);
    }

    /// Runs a shell command as another user in the mount's root.
    pub fn sh_as(&mut self, uid: u32, gid: u32, cmd: &str) {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&self.root)
            .uid(uid)
            .gid(gid)
            .output();
        self.rec(format!("sh as {uid}: {cmd}"), out, |o| {
            format!(
                "status={:?} out={:?}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).trim()
            )
        });
    }

    /// The whole merged tree, one line per entry.
    pub fn tree(&mut self) {
        let mut out = Vec::new();
        walk(&self.root, Path::new(""), false, &mut out);
        self.log.push("-- tree --".into());
        self.log.extend(out);
    }
}

/// How a case's two results must relate.
pub enum Expect<'a> {
    /// Kernel overlayfs and ours agree exactly.
    Same,
    /// A documented improvement: kernel overlayfs's log must contain `kernel_has`, and
    /// ours must equal `ours` (whole log, tree included).
    Improved {
        kernel_has: &'a str,
        ours: &'a [&'a str],
    },
    /// Ours only (the kernel lacks the feature, e.g. OCI whiteouts): our log must equal.
    OursOnly(&'a [&'a str]),
    /// A documented deviation: the logs differ only in the line `kernel_has` (kernel
    /// overlayfs) versus `ours_has` (ours).
    Deviation {
        kernel_has: &'a str,
        ours_has: &'a str,
    },
}

struct Dirs {
    _tmp: tempfile::TempDir,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

fn dirs(tag: &str) -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("ovl-{tag}-"))
        .tempdir()
        .unwrap();
    let mk = |n: &str| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };
    Dirs {
        upper: mk("upper"),
        work: mk("work"),
        mnt: mk("mnt"),
        _tmp: tmp,
    }
}

fn run_on(backend: Backend, fx: &Fixture, d: &Dirs, ops: &dyn Fn(&mut Ctx)) -> Vec<String> {
    let layers = Layers::writable(fx.lowers.clone(), d.upper.clone(), d.work.clone());
    run_layers(backend, &layers, &d.mnt, ops)
}

/// Mounts `layers` at `mnt` with `backend`, runs `ops`, lists the tree, unmounts, and
/// returns the log.
fn run_layers(
    backend: Backend,
    layers: &Layers,
    mnt: &Path,
    ops: &dyn Fn(&mut Ctx),
) -> Vec<String> {
    let guard = Overlay::mount(backend, layers, mnt, &MountOptions::default())
        .unwrap_or_else(|e| panic!("{backend:?} mount: {e:#?}"));
    let mut ctx = Ctx {
        root: mnt.to_path_buf(),
        log: Vec::new(),
    };
    ops(&mut ctx);
    ctx.tree();
    guard
        .unmount()
        .unwrap_or_else(|e| panic!("{backend:?} unmount: {e:#?}"));
    ctx.log
}

fn diff(a: &[String], b: &[String]) -> String {
    let mut s = String::new();
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).map_or("<none>", |s| s.as_str());
        let y = b.get(i).map_or("<none>", |s| s.as_str());
        let mark = if x == y { "  " } else { "!!" };
        s.push_str(&format!("{mark} kernel: {x}\n   ours:   {y}\n"));
    }
    s
}

/// Runs one differential case.
pub fn case(
    name: &str,
    layers: usize,
    setup: impl Fn(&Fixture),
    ops: impl Fn(&mut Ctx),
    expect: Expect<'_>,
) {
    require_root();
    let fx = Fixture::new(layers);
    setup(&fx);
    let before = fx.lowers_fingerprint();

    let kd = dirs("kernel");
    let kernel = run_on(Backend::Kernel, &fx, &kd, &ops);
    let fd = dirs("fuse");
    let ours = run_on(Backend::Fuse, &fx, &fd, &ops);

    assert_eq!(
        before,
        fx.lowers_fingerprint(),
        "{name}: a lower layer changed"
    );

    let oci_forms = matches!(expect, Expect::OursOnly(_));
    match expect {
        Expect::Same => assert!(
            kernel == ours,
            "{name}: results differ\n{}",
            diff(&kernel, &ours)
        ),
        Expect::Improved {
            kernel_has,
            ours: want,
        } => {
            assert!(
                kernel.iter().any(|l| l.contains(kernel_has)),
                "{name}: kernel overlayfs no longer shows {kernel_has:?}:\n{kernel:#?}"
            );
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert!(
                ours == want,
                "{name}: our result is not the expected one\n{}",
                diff(&want, &ours)
            );
        }
        Expect::Deviation {
            kernel_has,
            ours_has,
        } => {
            let k: Vec<&String> = kernel.iter().filter(|l| *l != kernel_has).collect();
            let o: Vec<&String> = ours.iter().filter(|l| *l != ours_has).collect();
            assert!(
                kernel.iter().any(|l| l == kernel_has),
                "{name}: kernel log lacks {kernel_has:?}"
            );
            assert!(
                ours.iter().any(|l| l == ours_has),
                "{name}: our log lacks {ours_has:?}"
            );
            assert!(
                k == o,
                "{name}: results differ beyond the documented line\n{}",
                diff(&kernel, &ours)
            );
        }
        Expect::OursOnly(want) => {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert!(
                ours == want,
                "{name}: our result is not the expected one\n{}",
                diff(&want, &ours)
            );
        }
    }

    // Our upper layer must mean the same to kernel overlayfs: mount it there and compare
    // the tree with what our mount showed (not for OCI-form layers, which the kernel
    // does not read).
    if oci_forms {
        return;
    }
    let work2 = fd._tmp.path().join("work2");
    fs::create_dir(&work2).unwrap();
    let layers = Layers::writable(fx.lowers.clone(), fd.upper.clone(), work2);
    let guard = Overlay::mount(Backend::Kernel, &layers, &fd.mnt, &MountOptions::default())
        .unwrap_or_else(|e| panic!("{name}: kernel remount of our upper: {e:#?}"));
    let mut ctx = Ctx {
        root: fd.mnt.clone(),
        log: Vec::new(),
    };
    ctx.tree();
    guard.unmount().unwrap();
    let our_tree: Vec<String> = ours
        .iter()
        .skip_while(|l| *l != "-- tree --")
        .cloned()
        .collect();
    assert!(
        ctx.log == our_tree,
        "{name}: kernel overlayfs reads our upper layer differently\n{}",
        diff(&ctx.log, &our_tree)
    );
}

/// Detaches a mount point when dropped (a test that fails half-way leaves no mount).
pub struct LazyUnmount(pub PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts `fx`'s layers as a read-only overlay (no upper layer) with `backend`, runs
/// `ops`, lists the tree, and returns the log.
pub fn run_read_only(backend: Backend, fx: &Fixture, ops: &dyn Fn(&mut Ctx)) -> Vec<String> {
    let d = dirs("ro");
    run_layers(backend, &Layers::read_only(fx.lowers.clone()), &d.mnt, ops)
}
