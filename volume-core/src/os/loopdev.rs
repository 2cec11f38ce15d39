//! Loop devices: attaching image files as block devices and finding them again.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::sys;

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// The device node, e.g. /dev/loop3.
    pub device: PathBuf,
    /// The backing file as the kernel names it.
    pub backing_file: PathBuf,
    /// Whether the loop driver does direct I/O on the file.
    pub direct_io: bool,
}

/// Attaches and detaches loop devices.
pub trait LoopControl: Send + Sync + Debug {
    /// Attaches `file` to a free loop device with 4 KiB logical blocks, with direct I/O
    /// when `direct_io` (falling back to buffered I/O where the file does not support
    /// it), and returns the device node.
    fn attach(&self, file: &Path, direct_io: bool, read_only: bool) -> io::Result<LoopInfo>;
    /// Detaches the loop device `device`.
    fn detach(&self, device: &Path) -> io::Result<()>;
    /// Makes `device` re-read its backing file's size.
    fn refresh_capacity(&self, device: &Path) -> io::Result<()>;
    /// All attached loop devices.
    fn list(&self) -> io::Result<Vec<LoopInfo>>;

    /// The loop devices backed by `file`.
    fn find(&self, file: &Path) -> io::Result<Vec<LoopInfo>> {
        let want = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        Ok(self
            .list()?
            .into_iter()
            .filter(|l| l.backing_file == want)
            .collect())
    }
}

/// Loop devices through /dev/loop-control and LOOP_CONFIGURE; state read from sysfs.
#[derive(Debug, Clone)]
pub struct RealLoopControl {
    dev: PathBuf,
    sys: PathBuf,
}

impl RealLoopControl {
    /// `dev` is normally /dev and `sys` /sys.
    pub fn new(dev: impl Into<PathBuf>, sys: impl Into<PathBuf>) -> Self {
        RealLoopControl {
            dev: dev.into(),
            sys: sys.into(),
        }
    }
}

/// Logical block size of our loop devices: matches the 4 KiB sectors of btrfs and of
/// the filesystems we make, so direct I/O is possible.
const LOOP_BLOCK_SIZE: u32 = 4096;

impl LoopControl for RealLoopControl {
    fn attach(&self, file: &Path, direct_io: bool, read_only: bool) -> io::Result<LoopInfo> {
        let backing = OpenOptions::new().read(true).write(!read_only).open(file)?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dev.join("loop-control"))?;
        let mut flags = 0;
        if direct_io {
            flags |= sys::LO_FLAGS_DIRECT_IO;
        }
        if read_only {
            flags |= sys::LO_FLAGS_READ_ONLY;
        }
        // Another process may claim the free device between GET_FREE and CONFIGURE:
        // EBUSY then, so ask again.
        for _ in 0..16 {
            let n = sys::loop_ctl_get_free(control.as_fd())?;
            let device = self.dev.join(format!("loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&device)?;
            match sys::loop_configure(dev.as_fd(), backing.as_fd(), LOOP_BLOCK_SIZE, flags) {
                Ok(()) => {
                    let direct = read_sys_flag(&self.sys, n, "dio").unwrap_or(false);
                    return Ok(LoopInfo {
                        device,
                        backing_file: file.canonicalize()?,
                        direct_io: direct,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "no free loop device after 16 tries",
        ))
    }

    fn detach(&self, device: &Path) -> io::Result<()> {
        let dev = File::open(device)?;
        match sys::loop_clr_fd(dev.as_fd()) {
            // ENXIO: not bound to anything, which is what we want.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            other => other,
        }
    }

    fn refresh_capacity(&self, device: &Path) -> io::Result<()> {
        let dev = File::open(device)?;
        sys::loop_set_capacity(dev.as_fd())
    }

    fn list(&self) -> io::Result<Vec<LoopInfo>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.sys.join("block"))? {
            let name = entry?.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("loop"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let backing = self.sys.join(format!("block/loop{n}/loop/backing_file"));
            let Ok(text) = std::fs::read_to_string(&backing) else {
                continue; // not bound
            };
            out.push(LoopInfo {
                device: self.dev.join(format!("loop{n}")),
                backing_file: PathBuf::from(text.trim_end_matches('\n')),
                direct_io: read_sys_flag(&self.sys, n, "dio").unwrap_or(false),
            });
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(out)
    }
}

fn read_sys_flag(sys: &Path, n: u32, name: &str) -> io::Result<bool> {
    let text = std::fs::read_to_string(sys.join(format!("block/loop{n}/loop/{name}")))?;
    Ok(text.trim() == "1")
}
