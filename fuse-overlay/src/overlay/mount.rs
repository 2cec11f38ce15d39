//! One API for both back ends: `Overlay::mount(Backend::Fuse | Backend::Kernel, …)`
//! returns a guard that unmounts on drop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::MsFlags;

use super::idmap::IdMap;
use super::{OverlayConfig, OverlayFs};
use crate::fuse::{FuseOptions, OverlayFuse};
use crate::kernel::{KernelOverlay, MountSys, RealMount};

/// Which implementation serves the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// This crate's FUSE filesystem.
    Fuse,
    /// Kernel overlayfs (`mount -t overlay`).
    Kernel,
}

/// The directories of an overlay.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Read-only lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Writable upper layer; `None` for a read-only overlay of the lower layers.
    pub upper: Option<PathBuf>,
    /// Work directory on the upper layer's filesystem (given with `upper` only).
    pub work: Option<PathBuf>,
}

impl Layers {
    /// Lower layers (top first) under a writable upper layer with its work directory.
    pub fn writable(lowers: Vec<PathBuf>, upper: PathBuf, work: PathBuf) -> Self {
        Layers {
            lowers,
            upper: Some(upper),
            work: Some(work),
        }
    }

    /// A read-only overlay of `lowers` (top first).
    pub fn read_only(lowers: Vec<PathBuf>) -> Self {
        Layers {
            lowers,
            upper: None,
            work: None,
        }
    }

    /// True without an upper layer.
    pub fn is_read_only(&self) -> bool {
        self.upper.is_none()
    }

    /// EINVAL unless there is a lower layer and `upper` and `work` are both given or
    /// both absent.
    fn check(&self) -> io::Result<()> {
        if self.lowers.is_empty() || self.upper.is_some() != self.work.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

/// Mount options common to both back ends (plus a few for each).
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let every user use the mount (FUSE `allow_other`; kernel mounts always do).
    /// Defaults to on for root; unprivileged mounts need `user_allow_other` in
    /// /etc/fuse.conf for it.
    pub allow_other: bool,
    /// Honour setuid bits.
    pub suid: bool,
    /// Honour device nodes.
    pub dev: bool,
    /// Allow execution.
    pub exec: bool,
    /// FUSE: passthrough of open files when privileged.
    pub passthrough: bool,
    /// FUSE: worker threads.
    pub threads: usize,
    /// FUSE: source name shown in the mount table.
    pub fsname: String,
    /// FUSE: cache time for read-only-layer entries.
    pub ttl_lower: Duration,
    /// FUSE: cache time for upper-layer entries.
    pub ttl_upper: Duration,
    /// Kernel: further overlayfs options (`volatile`, `redirect_dir=on`, …).
    pub kernel_extra: Vec<String>,
    /// FUSE: copy-ups are not fsynced (see [`OverlayConfig::volatile`]); the kernel
    /// back end gets overlayfs's own `volatile` option.
    pub volatile: bool,
    /// FUSE: user ids as stored in the layers → as the mount shows them
    /// (`uidmapping=`); the kernel back end refuses anything but the identity.
    pub uid_map: IdMap,
    /// FUSE: the same for groups (`gidmapping=`).
    pub gid_map: IdMap,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: nix::unistd::geteuid().is_root(),
            suid: false,
            dev: false,
            exec: true,
            passthrough: true,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
            fsname: "stowage-overlay".into(),
            ttl_lower: Duration::from_secs(600),
            ttl_upper: Duration::from_secs(1),
            kernel_extra: Vec::new(),
            volatile: false,
            uid_map: IdMap::default(),
            gid_map: IdMap::default(),
        }
    }
}

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer directories are unusable (missing, not directories, work directory on
    /// another filesystem than the upper layer).
    #[error("invalid overlay layers")]
    Layers(#[source] io::Error),
    /// The FUSE mount failed.
    #[error("FUSE mount at {target} failed")]
    FuseMount {
        /// Mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel overlayfs mount failed.
    #[error("kernel overlayfs mount at {target} failed")]
    KernelMount {
        /// Mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The back end cannot do what the options ask.
    #[error("the {backend:?} back end does not support {what}")]
    Unsupported {
        /// The back end asked for.
        backend: Backend,
        /// The option it cannot honour.
        what: &'static str,
    },
    /// Unmounting failed (the mount was then detached lazily).
    #[error("unmount of {target} failed")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Entry point of the mount API.
#[derive(Debug, Clone, Copy)]
pub struct Overlay;

#[derive(Debug)]
enum Inner {
    Fuse(fuser::BackgroundSession),
    /// Mounted through fusermount3 (unprivileged); unmounted the same way.
    FuseUser(fuser::BackgroundSession),
    Kernel,
}

/// A mounted overlay; dropping it unmounts (lazily if the mount is busy).
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    backend: Backend,
    inner: Option<Inner>,
}

/// The fuser configuration for our mounts.
pub(crate) fn fuser_config(options: &MountOptions, read_only: bool) -> fuser::Config {
    use fuser::MountOption as O;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        if read_only { O::RO } else { O::RW },
        O::FSName(options.fsname.clone()),
        // Passed to the kernel (fuser would only hand `Subtype` to fusermount), so the
        // mount table says `fuse.stowage-overlay`.
        O::CUSTOM("subtype=stowage-overlay".into()),
        O::DefaultPermissions,
        if options.suid { O::Suid } else { O::NoSuid },
        if options.dev { O::Dev } else { O::NoDev },
        if options.exec { O::Exec } else { O::NoExec },
    ];
    c.acl = if options.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(options.threads.max(1));
    c.clone_fd = options.threads > 1;
    c
}

/// The option string fusermount3 gets for an unprivileged mount.
fn fusermount_options(options: &MountOptions, read_only: bool) -> String {
    let mut o = vec![
        if read_only { "ro" } else { "rw" }.to_string(),
        format!("fsname={}", options.fsname),
        "subtype=stowage-overlay".to_string(),
        "default_permissions".to_string(),
        // fusermount3 forces these for unprivileged users anyway.
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    if !options.exec {
        o.push("noexec".into());
    }
    if options.allow_other {
        o.push("allow_other".into());
    }
    o.join(",")
}

/// A FUSE session on `target`: a direct mount when privileged, else through
/// fusermount3 (fuser's own unprivileged path needs a world-accessible /dev/fuse).
/// Returns the session and whether fusermount3 made it.
pub(crate) fn fuse_session(
    fs: OverlayFuse,
    target: &Path,
    options: &MountOptions,
    read_only: bool,
) -> io::Result<(fuser::Session<OverlayFuse>, bool)> {
    let config = fuser_config(options, read_only);
    if nix::unistd::geteuid().is_root() {
        return Ok((fuser::Session::new(fs, target, &config)?, false));
    }
    let fd = super::sys::fusermount(target, &fusermount_options(options, read_only))?;
    match fuser::Session::from_fd(fs, fd, config.acl, config) {
        Ok(s) => Ok((s, true)),
        Err(e) => {
            let _ = super::sys::fusermount_unmount(target, true);
            Err(e)
        }
    }
}

/// The FUSE filesystem for `layers`.
pub(crate) fn fuse_fs(layers: &Layers, options: &MountOptions) -> io::Result<OverlayFuse> {
    layers.check()?;
    let mut cfg = match (&layers.upper, &layers.work) {
        (Some(upper), Some(work)) => {
            let mut c = OverlayConfig::new(layers.lowers.clone(), upper.clone(), work.clone());
            c.ttl_upper = options.ttl_upper;
            c
        }
        _ => OverlayConfig::read_only(layers.lowers.clone()),
    };
    cfg.ttl_lower = options.ttl_lower;
    cfg.volatile = options.volatile;
    cfg.uid_map = options.uid_map.clone();
    cfg.gid_map = options.gid_map.clone();
    if cfg.read_only {
        cfg.ttl_upper = options.ttl_lower;
    }
    let core = Arc::new(OverlayFs::new(cfg)?);
    Ok(OverlayFuse::new(
        core,
        FuseOptions {
            passthrough: options.passthrough,
        },
    ))
}

impl Overlay {
    /// Mounts `layers` at `target` with the chosen back end.
    pub fn mount(
        backend: Backend,
        layers: &Layers,
        target: &Path,
        options: &MountOptions,
    ) -> Result<MountGuard, Error> {
        let inner = match backend {
            Backend::Fuse => {
                let fs = fuse_fs(layers, options).map_err(Error::Layers)?;
                let fail = |source| Error::FuseMount {
                    target: target.to_path_buf(),
                    source,
                };
                let (session, user) =
                    fuse_session(fs, target, options, layers.is_read_only()).map_err(fail)?;
                let session = session.spawn().map_err(fail)?;
                if user {
                    Inner::FuseUser(session)
                } else {
                    Inner::Fuse(session)
                }
            }
            Backend::Kernel => {
                if !options.uid_map.is_identity() || !options.gid_map.is_identity() {
                    return Err(Error::Unsupported {
                        backend,
                        what: "uid/gid mapping",
                    });
                }
                let mut flags = MsFlags::empty();
                if !options.suid {
                    flags |= MsFlags::MS_NOSUID;
                }
                if !options.dev {
                    flags |= MsFlags::MS_NODEV;
                }
                if !options.exec {
                    flags |= MsFlags::MS_NOEXEC;
                }
                let req = KernelOverlay {
                    lowers: layers.lowers.clone(),
                    upper: layers.upper.clone(),
                    work: layers.work.clone(),
                    extra: {
                        let mut extra = options.kernel_extra.clone();
                        if options.volatile && !extra.iter().any(|o| o == "volatile") {
                            extra.push("volatile".into());
                        }
                        extra
                    },
                    flags,
                };
                req.mount(&RealMount, target)
                    .map_err(|source| Error::KernelMount {
                        target: target.to_path_buf(),
                        source,
                    })?;
                Inner::Kernel
            }
        };
        tracing::info!(target = %target.display(), ?backend, "overlay mounted");
        Ok(MountGuard {
            target: target.to_path_buf(),
            backend,
            inner: Some(inner),
        })
    }
}

impl MountGuard {
    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The back end serving it.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Unmounts now. A busy mount is detached lazily and reported as an error.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Result<(), Error> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        let user = matches!(inner, Inner::FuseUser(_));
        let result = match inner {
            // Unmount ourselves (patiently), then let the session loop end.
            Inner::Fuse(session) => umount_patiently(&self.target).and_then(|()| session.join()),
            Inner::FuseUser(session) => {
                super::sys::fusermount_unmount(&self.target, false).and_then(|()| session.join())
            }
            Inner::Kernel => umount_patiently(&self.target),
        };
        match result {
            Ok(()) => Ok(()),
            Err(source) => {
                // Last resort: detach, so nothing stays mounted when the guard is gone.
                let _ = if user {
                    super::sys::fusermount_unmount(&self.target, true)
                } else {
                    RealMount.umount(&self.target, true)
                };
                Err(Error::Unmount {
                    target: self.target.clone(),
                    source,
                })
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            tracing::warn!(error = %e, "overlay unmount failed; detached lazily");
        }
    }
}

/// Unmounts `target`, retrying for up to two seconds while it is busy: the kernel
/// finishes releasing files closed just before (FUSE sends RELEASE asynchronously), so
/// an unmount right after the last close can meet EBUSY for a moment.
fn umount_patiently(target: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match RealMount.umount(target, false) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
