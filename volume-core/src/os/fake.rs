//! A recording fake of the whole host, for unit tests without root. It keeps a mount
//! table, loop devices and subvolumes in memory (subvolumes are plain directories so
//! file operations on them work in a temporary directory), logs every call, and fails
//! an operation on request.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::model::FsType;
use crate::os::Host;
use crate::os::btrfs::{Btrfs, QgroupUsage, ReceiveSink, SendStream};
use crate::os::copy::TreeCopy;
use crate::os::loopdev::{LoopControl, LoopInfo};
use crate::os::mkfs::Formatter;
use crate::os::mount::{Expected, Found, MountEntry, MountOptions, Mounter};
use crate::os::mountpoint::MountPoint;
use crate::os::nsmount::{Namespaces, NsRequest};
use crate::os::sendstream::Expect;

#[derive(Debug, Default)]
struct State {
    calls: Vec<String>,
    mounts: Vec<MountEntry>,
    loops: Vec<LoopInfo>,
    next_loop: u32,
    subvolumes: HashMap<PathBuf, u64>,
    next_subvolume: u64,
    limits: HashMap<PathBuf, u64>,
    /// (device, inode) of files and directories marked nodatacow.
    nocow: std::collections::HashSet<(u64, u64)>,
    failures: HashMap<String, i32>,
    ended: std::collections::HashSet<i32>,
    boot_id: Option<String>,
}

/// The fake host. Share it with `Arc` and hand [`FakeHost::host`] to the code under test.
#[derive(Debug)]
pub struct FakeHost {
    btrfs: bool,
    state: Mutex<State>,
}

impl FakeHost {
    /// A fake host whose pool filesystem is btrfs when `btrfs` is true.
    pub fn new(btrfs: bool) -> Arc<Self> {
        Arc::new(FakeHost {
            btrfs,
            state: Mutex::new(State {
                next_subvolume: 256,
                ..State::default()
            }),
        })
    }

    /// The trait objects backed by this fake.
    pub fn host(self: &Arc<Self>) -> Host {
        Host {
            mounter: self.clone(),
            loops: self.clone(),
            formatter: self.clone(),
            btrfs: self.clone(),
            copier: self.clone(),
            namespaces: self.clone(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, as `op arg...` strings.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Makes the next call of `op` (e.g. "mount", "attach", "format") fail with `errno`.
    pub fn fail_next(&self, op: &str, errno: i32) {
        self.state().failures.insert(op.to_string(), errno);
    }

    /// Mount points currently mounted.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.state()
            .mounts
            .iter()
            .map(|m| m.mount_point.clone())
            .collect()
    }

    /// Loop devices currently attached.
    pub fn attached(&self) -> Vec<LoopInfo> {
        self.state().loops.clone()
    }

    /// The qgroup limit set on a subvolume path.
    pub fn limit_of(&self, path: &Path) -> Option<u64> {
        self.state().limits.get(path).copied()
    }

    /// Records a call and returns the injected failure for `op`, if any.
    fn enter(&self, op: &str, args: &[&dyn std::fmt::Display]) -> io::Result<()> {
        let mut st = self.state();
        let mut line = op.to_string();
        for a in args {
            line.push(' ');
            line.push_str(&a.to_string());
        }
        st.calls.push(line);
        match st.failures.remove(op) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

fn to_err(op: &str, e: io::Error) -> Error {
    Error::io(format!("fake {op}"), e)
}

impl FakeHost {
    /// What a mount in the table stands for: the source of a bind, followed through
    /// binds of mount points (a publication of a staging path), or the device.
    fn identity_of(mounts: &[MountEntry], entry: &MountEntry) -> String {
        let mut cur = entry.clone();
        for _ in 0..8 {
            if cur.fs_type != "bind" {
                break;
            }
            match mounts
                .iter()
                .rev()
                .find(|m| m.mount_point.as_os_str() == cur.source.as_str())
            {
                Some(below) => cur = below.clone(),
                None => break,
            }
        }
        cur.source
    }

    fn judge(&self, path: &Path, expected: &Expected) -> Found {
        let st = self.state();
        let Some(entry) = st.mounts.iter().rev().find(|m| m.mount_point == path) else {
            return Found::Nothing;
        };
        let id = Self::identity_of(&st.mounts, entry);
        let ours = match expected {
            Expected::Dir(d) => Path::new(&id) == d,
            Expected::Device(devs) | Expected::DeviceNode(devs) => {
                devs.iter().any(|d| Path::new(&id) == d)
            }
            Expected::Overlay(upper) => {
                let want = format!("upperdir={}", upper.display());
                entry.super_options.split(',').any(|o| o == want)
                    || entry.fs_type == "fuse.stowage-overlay"
            }
        };
        if ours {
            Found::Expected
        } else {
            Found::Other(format!("{} {}", entry.fs_type, id))
        }
    }

    /// Mounts `source` at `target` in the table, as a test's stand-in for something
    /// else mounted there (another filesystem, another volume).
    pub fn mount_foreign(&self, source: &str, target: &Path) {
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: "tmpfs".into(),
            source: source.into(),
            root: PathBuf::from("/"),
            options: "rw".into(),
            super_options: String::new(),
        });
    }
}

impl Mounter for FakeHost {
    fn mount(
        &self,
        device: &Path,
        target: &MountPoint,
        fs_type: &str,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (flags, data) = opts.to_flags_and_data();
        let target = target.path();
        self.enter(
            "mount",
            &[&device.display(), &target.display(), &fs_type, &data],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: fs_type.to_string(),
            source: device.display().to_string(),
            root: PathBuf::from("/"),
            options: if flags.contains(nix::mount::MsFlags::MS_RDONLY) {
                "ro"
            } else {
                "rw"
            }
            .into(),
            super_options: data,
        });
        Ok(())
    }

    fn bind(
        &self,
        source: &MountPoint,
        target: &MountPoint,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (source, target) = (source.path(), target.path());
        self.enter(
            "bind",
            &[&source.display(), &target.display(), &opts.read_only],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: "bind".into(),
            source: source.display().to_string(),
            root: source.to_path_buf(),
            options: if opts.read_only { "ro" } else { "rw" }.into(),
            super_options: String::new(),
        });
        Ok(())
    }

    fn mount_fuse_overlay(
        &self,
        program: &Path,
        data: &str,
        target: &MountPoint,
        read_only: bool,
    ) -> io::Result<()> {
        let target = target.path();
        self.enter(
            "mount_fuse_overlay",
            &[&program.display(), &data, &target.display(), &read_only],
        )?;
        self.state().mounts.push(MountEntry {
            mount_point: target.to_path_buf(),
            fs_type: "fuse.stowage-overlay".into(),
            source: "stowage-overlay".into(),
            root: PathBuf::from("/"),
            options: if read_only { "ro" } else { "rw" }.into(),
            super_options: data.to_string(),
        });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        self.enter("unmount", &[&target.display()])?;
        let mut st = self.state();
        match st.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                st.mounts.remove(i);
                Ok(())
            }
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn probe(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        Ok(self.judge(path, expected))
    }

    fn unmount_expected(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        let found = self.judge(path, expected);
        if found == Found::Expected {
            self.unmount(path)?;
        }
        Ok(found)
    }

    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        Ok(self.state().mounts.clone())
    }

    fn freeze(&self, mount: &Path) -> io::Result<()> {
        self.enter("freeze", &[&mount.display()])
    }

    fn thaw(&self, mount: &Path) -> io::Result<()> {
        self.enter("thaw", &[&mount.display()])
    }
}

impl LoopControl for FakeHost {
    fn attach(&self, file: &Path, direct_io: bool, _read_only: bool) -> io::Result<LoopInfo> {
        self.enter("attach", &[&file.display()])?;
        let mut st = self.state();
        let n = st.next_loop;
        st.next_loop += 1;
        let info = LoopInfo {
            device: PathBuf::from(format!("/dev/loop{n}")),
            backing_file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
            direct_io,
        };
        st.loops.push(info.clone());
        Ok(info)
    }

    fn detach(&self, device: &Path) -> io::Result<()> {
        self.enter("detach", &[&device.display()])?;
        self.state().loops.retain(|l| l.device != device);
        Ok(())
    }

    fn refresh_capacity(&self, device: &Path) -> io::Result<()> {
        self.enter("refresh_capacity", &[&device.display()])
    }

    fn list(&self) -> io::Result<Vec<LoopInfo>> {
        Ok(self.state().loops.clone())
    }
}

impl Formatter for FakeHost {
    fn format(&self, image: &Path, fs: FsType) -> Result<()> {
        self.enter("format", &[&image.display(), &fs])
            .map_err(|e| to_err("format", e))
    }

    fn format_btrfs(&self, image: &Path, label: &str) -> Result<()> {
        self.enter("format_btrfs", &[&image.display(), &label])
            .map_err(|e| to_err("format_btrfs", e))
    }

    fn grow(&self, device: &Path, mount: Option<&Path>, fs: FsType) -> Result<()> {
        let how = if mount.is_some() { "online" } else { "offline" };
        self.enter("grow", &[&device.display(), &how, &fs])
            .map_err(|e| to_err("grow", e))
    }
}

impl TreeCopy for FakeHost {
    /// The fake's copies are plain copies, never atomic.
    fn makes_reflinks(&self, _dir: &Path) -> bool {
        false
    }

    fn copy_tree(&self, source: &Path, dest: &Path) -> Result<()> {
        self.enter("copy_tree", &[&source.display(), &dest.display()])
            .map_err(|e| to_err("copy_tree", e))?;
        if std::fs::symlink_metadata(source)
            .map_err(|e| to_err("copy_tree", e))?
            .is_file()
        {
            return std::fs::copy(source, dest)
                .map(drop)
                .map_err(|e| to_err("copy_tree", e));
        }
        copy_dir(source, dest).map_err(|e| to_err("copy_tree", e))
    }
}

/// A plain recursive copy of regular files and directories (enough for the fake).
fn copy_dir(source: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir(dest)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let to = dest.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

impl Btrfs for FakeHost {
    fn is_btrfs(&self, _path: &Path) -> io::Result<bool> {
        Ok(self.btrfs)
    }

    fn fs_uuid(&self, _mount: &Path) -> Result<String> {
        Ok("00000000-fake".into())
    }

    fn enable_quota(&self, mount: &Path) -> Result<()> {
        self.enter("enable_quota", &[&mount.display()])
            .map_err(|e| to_err("enable_quota", e))
    }

    fn create_subvolume(&self, path: &Path) -> Result<u64> {
        self.enter("create_subvolume", &[&path.display()])
            .map_err(|e| to_err("create_subvolume", e))?;
        std::fs::create_dir(path).map_err(|e| to_err("create_subvolume", e))?;
        let mut st = self.state();
        let id = st.next_subvolume;
        st.next_subvolume += 1;
        st.subvolumes.insert(path.to_path_buf(), id);
        Ok(id)
    }

    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<u64> {
        self.enter(
            "snapshot",
            &[&source.display(), &dest.display(), &read_only],
        )
        .map_err(|e| to_err("snapshot", e))?;
        copy_dir(source, dest).map_err(|e| to_err("snapshot", e))?;
        let key = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let (from, to) = (
            key(source).map_err(|e| to_err("snapshot", e))?,
            key(dest).map_err(|e| to_err("snapshot", e))?,
        );
        let mut st = self.state();
        // A snapshot's root keeps its source's flags, as on btrfs.
        if st.nocow.contains(&from) {
            st.nocow.insert(to);
        }
        let id = st.next_subvolume;
        st.next_subvolume += 1;
        st.subvolumes.insert(dest.to_path_buf(), id);
        Ok(id)
    }

    fn set_compression(&self, path: &Path, algorithm: &str) -> Result<()> {
        self.enter("set_compression", &[&path.display(), &algorithm])
            .map_err(|e| to_err("set_compression", e))?;
        // As on btrfs: a compressed directory stops handing nodatacow to new files.
        if algorithm != "none" {
            let meta = std::fs::metadata(path).map_err(|e| to_err("set_compression", e))?;
            self.state().nocow.remove(&(meta.dev(), meta.ino()));
        }
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        self.enter("delete_subvolume", &[&path.display()])
            .map_err(|e| to_err("delete_subvolume", e))?;
        std::fs::remove_dir_all(path).map_err(|e| to_err("delete_subvolume", e))?;
        let mut st = self.state();
        st.subvolumes.remove(path);
        st.limits.remove(path);
        Ok(())
    }

    fn set_limit(&self, path: &Path, bytes: u64) -> Result<()> {
        self.enter("set_limit", &[&path.display(), &bytes])
            .map_err(|e| to_err("set_limit", e))?;
        self.state().limits.insert(path.to_path_buf(), bytes);
        Ok(())
    }

    fn qgroup_usage(&self, _fs_uuid: &str, subvolume_id: u64) -> Result<Option<QgroupUsage>> {
        let st = self.state();
        let limit = st
            .subvolumes
            .iter()
            .find(|(_, id)| **id == subvolume_id)
            .and_then(|(p, _)| st.limits.get(p).copied());
        Ok(limit.map(|l| QgroupUsage {
            referenced: 16384,
            max_referenced: Some(l),
        }))
    }

    fn subvolume_id(&self, path: &Path) -> Result<u64> {
        self.state()
            .subvolumes
            .get(path)
            .copied()
            .ok_or_else(|| to_err("subvolume_id", io::Error::from_raw_os_error(libc::ENOENT)))
    }

    fn set_nocow(&self, file: &File) -> io::Result<()> {
        self.enter("set_nocow", &[])?;
        let meta = file.metadata()?;
        self.state().nocow.insert((meta.dev(), meta.ino()));
        Ok(())
    }

    fn clear_nocow(&self, dir: &File) -> io::Result<()> {
        self.enter("clear_nocow", &[])?;
        let meta = dir.metadata()?;
        self.state().nocow.remove(&(meta.dev(), meta.ino()));
        Ok(())
    }

    fn is_nocow(&self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        Ok(self.state().nocow.contains(&(meta.dev(), meta.ino())))
    }

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<Box<dyn SendStream>> {
        let parent_text = parent.map(|p| p.display().to_string()).unwrap_or_default();
        self.enter("send", &[&snapshot.display(), &parent_text])
            .map_err(|e| to_err("send", e))?;
        let bytes = fake_stream(snapshot).map_err(|e| to_err("send", e))?;
        Ok(Box::new(FakeSend(io::Cursor::new(bytes))))
    }

    fn is_subvolume(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state().subvolumes.contains_key(path))
    }

    fn wait_for_cleaner(&self, path: &Path, _timeout: std::time::Duration) -> Result<bool> {
        self.enter("wait_for_cleaner", &[&path.display()])
            .map_err(|e| to_err("wait_for_cleaner", e))?;
        Ok(true)
    }

    fn subvolume_uuids(&self, path: &Path) -> Result<Vec<[u8; 16]>> {
        // The fake's received subvolumes are plain directories without an id.
        Ok(self
            .subvolume_id(path)
            .map(|id| {
                let mut uuid = [0u8; 16];
                uuid[..8].copy_from_slice(&id.to_le_bytes());
                vec![uuid]
            })
            .unwrap_or_default())
    }

    fn receive(&self, dir: &Path, _expect: Expect) -> Result<Box<dyn ReceiveSink>> {
        self.enter("receive", &[&dir.display()])
            .map_err(|e| to_err("receive", e))?;
        Ok(Box::new(FakeReceive {
            dir: dir.to_path_buf(),
            bytes: Vec::new(),
        }))
    }
}

/// The fake's send stream format: `FAKESEND\n<subvolume name>\n`, then per top-level
/// regular file `<name>\n<length>\n<bytes>`. Always a full stream.
const FAKE_MAGIC: &str = "FAKESEND\n";

fn fake_stream(snapshot: &Path) -> io::Result<Vec<u8>> {
    let name = snapshot
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut out = format!("{FAKE_MAGIC}{}\n", name.to_string_lossy()).into_bytes();
    let mut entries: Vec<_> = std::fs::read_dir(snapshot)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type()?.is_file() {
            let data = std::fs::read(e.path())?;
            out.extend_from_slice(
                format!("{}\n{}\n", e.file_name().to_string_lossy(), data.len()).as_bytes(),
            );
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct FakeSend(io::Cursor<Vec<u8>>);

impl io::Read for FakeSend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl SendStream for FakeSend {
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Collects the stream and applies it at `finish`, as `btrfs receive` would: the
/// subvolume appears under `dir` with the sender's name; a malformed or truncated
/// stream fails, leaving what was made so far.
#[derive(Debug)]
struct FakeReceive {
    dir: PathBuf,
    bytes: Vec<u8>,
}

impl io::Write for FakeReceive {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ReceiveSink for FakeReceive {
    fn finish(self: Box<Self>) -> Result<()> {
        let bad = || Error::Command {
            program: "fake receive".into(),
            status: "exit status: 1".into(),
            stderr: "malformed stream".into(),
        };
        let rest = self
            .bytes
            .strip_prefix(FAKE_MAGIC.as_bytes())
            .ok_or_else(bad)?;
        let mut lines = rest.splitn(2, |b| *b == b'\n');
        let name = String::from_utf8_lossy(lines.next().ok_or_else(bad)?).into_owned();
        let mut rest = lines.next().ok_or_else(bad)?;
        let sub = self.dir.join(&name);
        std::fs::create_dir(&sub).map_err(|e| to_err("receive", e))?;
        while !rest.is_empty() {
            let mut parts = rest.splitn(3, |b| *b == b'\n');
            let file = String::from_utf8_lossy(parts.next().ok_or_else(bad)?).into_owned();
            let len: usize = String::from_utf8_lossy(parts.next().ok_or_else(bad)?)
                .parse()
                .map_err(|_| bad())?;
            let tail = parts.next().ok_or_else(bad)?;
            if tail.len() < len {
                return Err(bad());
            }
            std::fs::write(sub.join(file), &tail[..len]).map_err(|e| to_err("receive", e))?;
            rest = &tail[len..];
        }
        Ok(())
    }
}

impl FakeHost {
    /// Makes the host have booted again (every process, every namespace gone).
    pub fn reboot(&self) {
        let mut st = self.state();
        let next = format!("{}+", st.boot_id.clone().unwrap_or_else(|| "boot-1".into()));
        st.boot_id = Some(next);
    }

    /// Makes process `pid` (and its mount namespace) gone.
    pub fn end_process(&self, pid: i32) {
        self.state().ended.insert(pid);
    }
}

impl Namespaces for FakeHost {
    fn mount_namespace(&self, pid: i32) -> io::Result<u64> {
        if self.state().ended.contains(&pid) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(4_000_000_000 + pid as u64)
    }

    fn attachment_alive(&self, pid: i32, _mnt_ns: Option<u64>) -> io::Result<bool> {
        Ok(!self.state().ended.contains(&pid))
    }

    fn boot_id(&self) -> io::Result<String> {
        Ok(self
            .state()
            .boot_id
            .clone()
            .unwrap_or_else(|| "boot-1".into()))
    }

    fn run(&self, req: &NsRequest) -> io::Result<bool> {
        if let NsRequest::Attach { pid, .. } | NsRequest::Detach { pid, .. } = req
            && self.state().ended.contains(pid)
        {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        match req {
            NsRequest::Attach { pid, target, .. } => {
                self.enter("ns_attach", &[pid, &target.display()])?;
            }
            NsRequest::Detach { pid, target, .. } => {
                self.enter("ns_detach", &[pid, &target.display()])?;
            }
        }
        Ok(false)
    }
}
