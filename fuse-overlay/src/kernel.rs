//! Kernel overlayfs back end: `mount -t overlay` through mount(2), behind a small trait
//! so the option string and flags are unit-tested without privilege.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};

/// The mount(2)/umount2(2) side effect.
pub trait MountSys: Send + Sync + std::fmt::Debug {
    /// `mount(source, target, fstype, flags, data)`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()>;
    /// `umount2(target)`, lazily (`MNT_DETACH`) when asked.
    fn umount(&self, target: &Path, lazy: bool) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealMount;

impl MountSys for RealMount {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, Some(data))?;
        Ok(())
    }

    fn umount(&self, target: &Path, lazy: bool) -> io::Result<()> {
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        nix::mount::umount2(target, flags)?;
        Ok(())
    }
}

/// A recording fake of [`MountSys`] that can be told to fail.
#[derive(Debug, Default)]
pub struct FakeMount {
    /// Calls so far, as readable lines.
    pub calls: Mutex<Vec<String>>,
    /// Errno to fail every call with, if set.
    pub fail_with: Option<i32>,
}

impl MountSys for FakeMount {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "mount {source} {} {fstype} {:#x} {data}",
                target.display(),
                flags.bits()
            ));
        self.fail_with
            .map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)))
    }

    fn umount(&self, target: &Path, lazy: bool) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("umount {} lazy={lazy}", target.display()));
        self.fail_with
            .map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)))
    }
}

/// A kernel overlayfs mount request.
#[derive(Debug, Clone)]
pub struct KernelOverlay {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Upper layer; `None` for a read-only overlay (then mounted `MS_RDONLY`; the
    /// kernel needs two lower layers at least).
    pub upper: Option<PathBuf>,
    /// Work directory (with `upper`).
    pub work: Option<PathBuf>,
    /// Further overlayfs options (`volatile`, `redirect_dir=on`, `userxattr`, …).
    pub extra: Vec<String>,
    /// mount(2) flags (`MS_NOSUID`, `MS_NODEV`, `MS_RDONLY`, …).
    pub flags: MsFlags,
}

impl KernelOverlay {
    /// The option string for mount(2).
    pub fn data(&self) -> io::Result<String> {
        let upper_and_work = match (&self.upper, &self.work) {
            (Some(upper), Some(work)) => Some((upper.as_path(), work.as_path())),
            (None, None) => None,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        stowage_sys::mount::overlayfs_data(&self.lowers, upper_and_work, &self.extra)
    }

    /// Mounts at `target`.
    pub fn mount(&self, sys: &dyn MountSys, target: &Path) -> io::Result<()> {
        let mut flags = self.flags;
        if self.upper.is_none() {
            flags |= MsFlags::MS_RDONLY;
        }
        sys.mount("overlay", target, "overlay", flags, &self.data()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> KernelOverlay {
        KernelOverlay {
            lowers: vec!["/l/a".into(), "/l/b:c".into()],
            upper: Some("/u".into()),
            work: Some("/w".into()),
            extra: vec!["volatile".into()],
            flags: MsFlags::MS_NOSUID,
        }
    }

    #[test]
    fn option_string_escapes_colons_and_keeps_order() {
        assert_eq!(
            req().data().unwrap(),
            "lowerdir=/l/a:/l/b\\:c,upperdir=/u,workdir=/w,volatile"
        );
    }

    #[test]
    fn commas_and_empty_lowers_are_refused() {
        let mut r = req();
        r.upper = Some("/u,x".into());
        assert_eq!(r.data().unwrap_err().raw_os_error(), Some(libc::EINVAL));
        let mut r = req();
        r.lowers.clear();
        assert!(r.data().is_err());
    }

    #[test]
    fn mount_goes_through_the_trait() {
        let fake = FakeMount::default();
        req().mount(&fake, Path::new("/t")).unwrap();
        let calls = fake.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].starts_with("mount overlay /t overlay 0x2 lowerdir=/l/a"));
    }

    #[test]
    fn without_upper_it_is_a_read_only_mount_of_the_lowers() {
        let mut r = req();
        r.upper = None;
        r.work = None;
        r.extra.clear();
        assert_eq!(r.data().unwrap(), "lowerdir=/l/a:/l/b\\:c");
        let fake = FakeMount::default();
        r.mount(&fake, Path::new("/t")).unwrap();
        let calls = fake.calls.lock().unwrap();
        // MS_NOSUID | MS_RDONLY
        assert!(
            calls[0].starts_with("mount overlay /t overlay 0x3 lowerdir="),
            "{}",
            calls[0]
        );
        r.work = Some("/w".into());
        assert!(r.data().is_err(), "a work directory without an upper layer");
    }
}
