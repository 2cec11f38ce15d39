//! Mounting: filesystem mounts of loop devices, bind mounts of staged volumes, and
//! reading the mount table.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::os::mountpoint::MountPoint;
use crate::sys;

/// Options of a mount, as the driver decides them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountOptions {
    /// Mount read-only.
    pub read_only: bool,
    /// Ignore set-user-id bits (the default for volumes).
    pub nosuid: bool,
    /// Ignore device nodes (the default for volumes).
    pub nodev: bool,
    /// Further options from the CO (`noatime`, `noexec`, filesystem data options).
    pub extra: Vec<String>,
}

impl MountOptions {
    /// The driver's defaults for a volume: nosuid, nodev.
    pub fn volume_defaults() -> Self {
        MountOptions {
            read_only: false,
            nosuid: true,
            nodev: true,
            extra: Vec::new(),
        }
    }

    /// Splits the options into mount(2) flags and the filesystem data string.
    pub fn to_flags_and_data(&self) -> (MsFlags, String) {
        let mut flags = MsFlags::empty();
        if self.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if self.nosuid {
            flags |= MsFlags::MS_NOSUID;
        }
        if self.nodev {
            flags |= MsFlags::MS_NODEV;
        }
        let mut data = Vec::new();
        for opt in &self.extra {
            match opt.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" | "defaults" | "" => {}
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
                "relatime" => flags |= MsFlags::MS_RELATIME,
                "strictatime" => flags |= MsFlags::MS_STRICTATIME,
                "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
                "dirsync" => flags |= MsFlags::MS_DIRSYNC,
                other => data.push(other),
            }
        }
        (flags, data.join(","))
    }

    /// The options as mount attributes for mount_setattr on a new bind mount: the
    /// attributes to set and to clear. Filesystem data options do not apply to a bind.
    pub fn to_mount_attr(&self) -> (u64, u64) {
        let (flags, _) = self.to_flags_and_data();
        let mut set = 0;
        let mut clear = 0;
        for (flag, attr) in [
            (MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
            (MsFlags::MS_NODIRATIME, sys::MOUNT_ATTR_NODIRATIME),
        ] {
            if flags.contains(flag) {
                set |= attr;
            }
        }
        if flags.contains(MsFlags::MS_NOATIME) {
            set |= sys::MOUNT_ATTR_NOATIME;
            clear |= sys::MOUNT_ATTR_ATIME_MASK;
        } else if flags.contains(MsFlags::MS_STRICTATIME) {
            set |= sys::MOUNT_ATTR_STRICTATIME;
            clear |= sys::MOUNT_ATTR_ATIME_MASK;
        }
        (set, clear)
    }
}

/// What the daemon expects to be mounted at a path before it counts that mount as
/// its own (to unmount it, or to call a volume staged or published there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A bind mount whose root is this directory of the pool (a directory or image
    /// volume's staging, a directory volume's publication).
    Dir(PathBuf),
    /// The filesystem on one of these block devices, or a bind of its root (a loop
    /// volume's staging and publications).
    Device(Vec<PathBuf>),
    /// One of these device nodes bound onto a file (a block volume's target).
    DeviceNode(Vec<PathBuf>),
    /// An image volume's overlay whose writable layer is this upper directory.
    Overlay(PathBuf),
}

/// What is mounted at a path, against what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing is mounted there, or the path does not exist.
    Nothing,
    /// The expected mount.
    Expected,
    /// Something else (another filesystem, another volume, a mount over ours),
    /// described for an error message.
    Other(String),
}

/// The overlayfs data string `lowerdir=A:B,upperdir=U,workdir=W` (lowers top first),
/// as kernel overlayfs and `stowage-overlay -o` take it (the one builder,
/// `stowage_sys::mount::overlayfs_data`).
pub fn overlay_data(lowers: &[PathBuf], upper: &Path, work: &Path) -> io::Result<String> {
    stowage_sys::mount::overlayfs_data(lowers, Some((upper, work)), &[])
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source (device, or the filesystem's own word).
    pub source: String,
    /// Root of the mount within its filesystem (a bind mount's subdirectory).
    pub root: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// The filesystem's own options (`rw,lowerdir=...,upperdir=...`).
    pub super_options: String,
}

impl MountEntry {
    /// True when the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Mounts and unmounts. Targets are [`MountPoint`]s, resolved without following links:
/// a mount lands on what was resolved, whatever happened to the path since.
pub trait Mounter: Send + Sync + Debug {
    /// Mounts the filesystem on `device` of type `fs_type` at `target`.
    fn mount(
        &self,
        device: &Path,
        target: &MountPoint,
        fs_type: &str,
        opts: &MountOptions,
    ) -> io::Result<()>;
    /// Bind-mounts `source` (that mount only, not those below it) at `target` with
    /// `opts` (read-only, nosuid, ...) applied before it appears there.
    fn bind(&self, source: &MountPoint, target: &MountPoint, opts: &MountOptions)
    -> io::Result<()>;
    /// Mounts an overlay with the FUSE server `program` (`stowage-overlay`, which has
    /// fuse-overlayfs's command line: `-o <data> TARGET`, serving from a process of its
    /// own that outlives the caller), then makes the mount read-only if asked.
    fn mount_fuse_overlay(
        &self,
        program: &Path,
        data: &str,
        target: &MountPoint,
        read_only: bool,
    ) -> io::Result<()>;
    /// Unmounts `target` (a path the daemon owns, such as its pool).
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// What is mounted at canonical `path`, against `expected`. A path with a link in
    /// it is an `ELOOP` error.
    fn probe(&self, path: &Path, expected: &Expected) -> io::Result<Found>;
    /// Unmounts the mount at canonical `path` if it is the `expected` one, and says what
    /// it found; anything else there is left alone.
    fn unmount_expected(&self, path: &Path, expected: &Expected) -> io::Result<Found>;
    /// The current mount table.
    fn mounts(&self) -> io::Result<Vec<MountEntry>>;
    /// Freezes the filesystem mounted at `mount` (FIFREEZE): flushed, writes blocked.
    fn freeze(&self, mount: &Path) -> io::Result<()>;
    /// Thaws a frozen filesystem (FITHAW).
    fn thaw(&self, mount: &Path) -> io::Result<()>;

    /// The topmost mount at exactly `path`, if any.
    fn mount_at(&self, path: &Path) -> io::Result<Option<MountEntry>> {
        Ok(self
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == path))
    }
}

/// Mounts with mount(2) and reads the table from a mountinfo file.
#[derive(Debug, Clone)]
pub struct RealMounter {
    mountinfo: PathBuf,
}

impl RealMounter {
    /// `mountinfo` is normally /proc/self/mountinfo.
    pub fn new(mountinfo: impl Into<PathBuf>) -> Self {
        RealMounter {
            mountinfo: mountinfo.into(),
        }
    }
}

impl RealMounter {
    /// What is at `path`, against `expected`.
    fn identify(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        let id = match crate::os::mountpoint::identity_of(path) {
            Ok(id) => id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Found::Nothing),
            // A filesystem that no longer answers (a FUSE server gone, an xfs shut
            // down after an I/O error) is still recognised by the mount table.
            Err(e) if is_dead_fs(&e) => return self.identify_by_table(path, expected),
            Err(e) => return Err(e),
        };
        // A symlink is never what the daemon mounted (and is not followed above).
        if id.mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        // The mount table (every mount on the node) is read only where statx does
        // not settle it: an overlay, a kernel without STATX_ATTR_MOUNT_ROOT, the
        // description of a mount that is not ours.
        let table = || self.mount_at(path);
        let is_mount = match id.mount_root {
            Some(root) => root,
            None => table()?.is_some(),
        };
        if !is_mount {
            return Ok(Found::Nothing);
        }
        let rdev_of = |d: &Path| {
            std::fs::metadata(d)
                .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
                .ok()
        };
        let ours = match expected {
            Expected::Dir(dir) => std::fs::metadata(dir).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.dev() == id.dev && m.ino() == id.ino
            }),
            Expected::Device(devs) => devs.iter().any(|d| rdev_of(d) == Some(id.dev)),
            Expected::DeviceNode(devs) => {
                id.mode & libc::S_IFMT == libc::S_IFBLK
                    && devs.iter().any(|d| rdev_of(d) == Some(id.rdev))
            }
            Expected::Overlay(upper) => table()?.is_some_and(|e| overlay_is(&e, upper)),
        };
        if ours {
            return Ok(Found::Expected);
        }
        Ok(judged(false, table()?.as_ref()))
    }

    /// What is at `path` by the mount table alone, for a filesystem that does not
    /// answer: the topmost entry's source, root and type against `expected`.
    fn identify_by_table(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        let Some(entry) = self.mount_at(path)? else {
            return Ok(Found::Nothing);
        };
        let ours = match expected {
            // A bind of the volume directory: its root ends in volumes/<id>.
            Expected::Dir(dir) => {
                dir.iter()
                    .rev()
                    .take(2)
                    .zip(entry.root.iter().rev())
                    .filter(|(a, b)| a == b)
                    .count()
                    == 2
            }
            Expected::Device(devs) => devs.iter().any(|d| Path::new(&entry.source) == d),
            Expected::DeviceNode(devs) => {
                entry.fs_type == "devtmpfs"
                    && devs.iter().any(|d| {
                        d.file_name().is_some()
                            && Path::new("/").join(d.file_name().unwrap_or_default()) == entry.root
                    })
            }
            Expected::Overlay(upper) => overlay_is(&entry, upper),
        };
        Ok(judged(ours, Some(&entry)))
    }
}

/// Errors of a filesystem that no longer answers.
fn is_dead_fs(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::EIO) | Some(libc::ESTALE) | Some(libc::EUCLEAN)
    )
}

/// The fsname of the `stowage-overlay` mount whose writable layer is `upper`
/// (`<volume dir>/pub-<hash>/upper`): `stowage-overlay:<volume id>/pub-<hash>`.
pub fn fuse_overlay_fsname(upper: &Path) -> String {
    let publication = upper.parent();
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!(
        "stowage-overlay:{}/{}",
        name(publication.and_then(Path::parent)),
        name(publication)
    )
}

/// An image volume's overlay with writable layer `upper`: kernel overlayfs with that
/// upperdir, or the `stowage-overlay` FUSE mount named after it (or, mounted by an
/// earlier release, plainly `stowage-overlay`).
fn overlay_is(e: &MountEntry, upper: &Path) -> bool {
    let want = format!("upperdir={}", upper.display());
    (e.fs_type == "overlay" && e.super_options.split(',').any(|o| unescape(o) == want))
        || (e.fs_type.starts_with("fuse")
            && (e.source == fuse_overlay_fsname(upper) || e.source == "stowage-overlay"))
}

fn judged(ours: bool, entry: Option<&MountEntry>) -> Found {
    if ours {
        return Found::Expected;
    }
    Found::Other(match entry {
        Some(e) => format!("{} {} (root {})", e.fs_type, e.source, e.root.display()),
        None => "another mount".into(),
    })
}

impl Mounter for RealMounter {
    fn mount(
        &self,
        device: &Path,
        target: &MountPoint,
        fs_type: &str,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (flags, data) = opts.to_flags_and_data();
        let data = (!data.is_empty()).then_some(data.as_str());
        // Through the descriptor: the mount lands on what was resolved.
        nix::mount::mount(
            Some(device),
            &target.proc_path(),
            Some(fs_type),
            flags,
            data,
        )?;
        Ok(())
    }

    fn bind(
        &self,
        source: &MountPoint,
        target: &MountPoint,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let tree = sys::open_tree_clone_fd(source.fd())?;
        let (set, clear) = opts.to_mount_attr();
        if set != 0 || clear != 0 {
            sys::mount_setattr(std::os::fd::AsFd::as_fd(&tree), set, clear, None)?;
        }
        sys::move_mount_onto(std::os::fd::AsFd::as_fd(&tree), target.fd())
    }

    fn mount_fuse_overlay(
        &self,
        program: &Path,
        data: &str,
        target: &MountPoint,
        read_only: bool,
    ) -> io::Result<()> {
        // The server mounts by path: it is given this process's link to the resolved
        // directory (/proc/<pid>/fd/<n>), which mount(2) follows to exactly that
        // directory whatever happened to the caller's path since. The link stays valid
        // while we wait: the program returns once its server has mounted.
        let via = target.proc_path();
        let out = std::process::Command::new(program)
            .arg("-o")
            .arg(data)
            .arg(&via)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("run {}: {e}", program.display())))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{} exited with {}: {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if read_only {
            // stowage-overlay has no `ro` option; the mount itself is made read-only,
            // through a descriptor of its root reached without links.
            let made = MountPoint::open(target.path()).and_then(|root| {
                sys::mount_setattr(
                    root.fd(),
                    sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    0,
                    None,
                )
            });
            if let Err(e) = made {
                let _ = crate::os::mountpoint::unmount_beneath(target.path());
                return Err(e);
            }
        }
        Ok(())
    }

    fn probe(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        self.identify(path, expected)
    }

    fn unmount_expected(&self, path: &Path, expected: &Expected) -> io::Result<Found> {
        let found = self.identify(path, expected)?;
        if found == Found::Expected {
            // A moment of EBUSY passes: a process the daemon forks (mkfs, btrfs) holds
            // copies of the daemon's descriptors until its exec. A mount in real use
            // stays busy and is reported.
            let mut tries = 0;
            loop {
                match crate::os::mountpoint::unmount_beneath(path) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Found::Nothing),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 10 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(found)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::empty())?;
        Ok(())
    }

    fn mounts(&self) -> io::Result<Vec<MountEntry>> {
        Ok(parse_mountinfo(&std::fs::read_to_string(&self.mountinfo)?))
    }

    fn freeze(&self, mount: &Path) -> io::Result<()> {
        let dir = std::fs::File::open(mount)?;
        crate::sys::freeze(std::os::fd::AsFd::as_fd(&dir))
    }

    fn thaw(&self, mount: &Path) -> io::Result<()> {
        let dir = std::fs::File::open(mount)?;
        crate::sys::thaw(std::os::fd::AsFd::as_fd(&dir))
    }
}

/// Parses mountinfo text (see proc(5)); lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let root = l.nth(3)?;
            let mount_point = l.next()?;
            let options = l.next()?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let source = r.next()?;
            let super_options = r.next().unwrap_or_default();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
                source: unescape(source),
                root: PathBuf::from(unescape(root)),
                options: options.to_string(),
                super_options: super_options.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = u32::from(bytes[i + 1] - b'0') * 64
                + u32::from(bytes[i + 2] - b'0') * 8
                + u32::from(bytes[i + 3] - b'0');
            // \400 and above are no byte: kept as written.
            match u8::try_from(v) {
                Ok(b) => {
                    out.push(b);
                    i += 4;
                }
                Err(_) => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 7:3 / /var/lib/stowage/pool rw,nosuid,nodev shared:50 - btrfs /dev/loop3 rw,space_cache=v2
96 22 7:3 /volumes/v1 /mnt/with\\040space ro,nosuid,nodev shared:50 - btrfs /dev/loop3 rw
";

    #[test]
    fn parses_mount_points_roots_and_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/var/lib/stowage/pool"));
        assert_eq!(m[1].fs_type, "btrfs");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[2].root, Path::new("/volumes/v1"));
        assert!(m[2].read_only());
        assert!(!m[1].read_only());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts = MountOptions {
            extra: vec![
                "noatime".into(),
                "discard".into(),
                "ro".into(),
                "commit=30".into(),
            ],
            ..MountOptions::volume_defaults()
        };
        let (flags, data) = opts.to_flags_and_data();
        assert!(flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "discard,commit=30");
    }
}
