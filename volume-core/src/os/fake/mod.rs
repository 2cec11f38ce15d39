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
use crate::os::loopdev::{FileId, LoopControl, LoopInfo};
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

mod btrfs;
mod devices;
mod mounts;
