//! The `stowage-overlay` command line (fuse-overlayfs compatible) and the daemon that
//! serves one mount; the binary only calls [`run`].
//!
//! Forms accepted:
//!
//! ```text
//! stowage-overlay [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,opts] MOUNTPOINT
//! stowage-overlay SOURCE MOUNTPOINT -o opts          (fuse3's mount helper)
//! ```
//!
//! Without `-f` the process forks; the parent exits 0 once the mount is up (or 1 with
//! the error), which is what `mount -t fuse.stowage-overlay` waits for.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use super::idmap::IdMap;
use super::mount::{Layers, MountOptions, fuse_fs, fuse_session};
use super::sys::{Forked, fork_process};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "stowage-overlay",
    version,
    about = "Overlay filesystem over FUSE (fuse-overlayfs compatible command line)"
)]
pub struct Cli {
    /// Mount options, comma separated (repeatable): lowerdir=A:B, upperdir=U,
    /// workdir=W, and the usual mount options.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Debug output (implies -f).
    #[arg(short = 'd')]
    pub debug: bool,
    /// `[SOURCE] MOUNTPOINT` (SOURCE, given by mount helpers, is ignored).
    #[arg(required = true, num_args = 1..=2, value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
}

/// Options that fuse-overlayfs or mount(8) pass and that change nothing here.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "async",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "default_permissions",
    "allow_root",
    "fast_ino",
    "static_nlink",
    "noacl",
    "userxattr",
    "xattr_permissions",
    "redirect_dir",
    "index",
    "metacopy",
    "writeback",
    "threaded",
    "plugins",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_idle_threads",
];

/// Options whose meaning we do not implement: refused rather than silently ignored.
const UNSUPPORTED: &[&str] = &[
    "ro",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "noxattrs",
];

/// A parse error of `-o` options.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// A required option is missing.
    #[error("missing option {0}")]
    Missing(&'static str),
    /// An option we do not support.
    #[error("option {0} is not supported")]
    Unsupported(String),
    /// An option we do not know.
    #[error("unknown option {0}")]
    Unknown(String),
    /// A bad value.
    #[error("bad value for option {0}")]
    BadValue(String),
}

/// The mount a command line asks for.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Layer directories.
    pub layers: Layers,
    /// Mount options.
    pub options: MountOptions,
}

/// Splits `lowerdir` on unescaped `:` (`\:` is a literal colon).
fn split_lowers(v: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(PathBuf::from(std::mem::take(&mut cur))),
            c => cur.push(c),
        }
    }
    out.push(PathBuf::from(cur));
    out.into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// Splits `-o` option strings at commas, except that a `STORED:SHOWN:LEN` triple after
/// a `uidmapping=`/`gidmapping=` option continues it (fuse-overlayfs's manual writes
/// further triples after commas).
fn join_id_mappings(options: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for opt in options.iter().flat_map(|s| s.split(',')) {
        let triple = opt.split(':').count() % 3 == 0
            && opt
                .split(':')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match out.last_mut() {
            Some(prev)
                if triple
                    && (prev.starts_with("uidmapping=") || prev.starts_with("gidmapping=")) =>
            {
                prev.push(':');
                prev.push_str(opt);
            }
            _ => out.push(opt.to_string()),
        }
    }
    out
}

/// Parses `-o` option strings (each comma separated), relative paths against `cwd`.
pub fn parse_options(options: &[String], cwd: &Path) -> Result<Parsed, OptionError> {
    let mut lowers = None;
    let mut upper = None;
    let mut work = None;
    let mut o = MountOptions {
        // Mount helpers and container tools expect a usable root filesystem.
        suid: true,
        dev: true,
        ..MountOptions::default()
    };
    for opt in &join_id_mappings(options) {
        let opt = opt.as_str();
        if opt.is_empty() {
            continue;
        }
        let (key, value) = opt
            .split_once('=')
            .map_or((opt, None), |(k, v)| (k, Some(v)));
        let path = |v: Option<&str>| -> Result<PathBuf, OptionError> {
            let v = v
                .filter(|v| !v.is_empty())
                .ok_or_else(|| OptionError::BadValue(key.into()))?;
            Ok(cwd.join(v))
        };
        match key {
            "lowerdir" => {
                let v = value.ok_or_else(|| OptionError::BadValue(key.into()))?;
                lowers = Some(
                    split_lowers(v)
                        .into_iter()
                        .map(|p| cwd.join(p))
                        .collect::<Vec<_>>(),
                );
            }
            "upperdir" => upper = Some(path(value)?),
            "workdir" => work = Some(path(value)?),
            "suid" => o.suid = true,
            "nosuid" => o.suid = false,
            "dev" => o.dev = true,
            "nodev" => o.dev = false,
            "exec" => o.exec = true,
            "noexec" => o.exec = false,
            "allow_other" => o.allow_other = true,
            "fsname" => o.fsname = value.unwrap_or_default().to_string(),
            "subtype" => {}
            "passthrough" => {
                o.passthrough = !matches!(value, Some("0") | Some("off") | Some("false"))
            }
            "nopassthrough" => o.passthrough = false,
            // Copy-ups without fsync: kernel overlayfs's name, and fuse-overlayfs's.
            "volatile" => o.volatile = true,
            "fsync" => match value {
                Some("0") => o.volatile = true,
                Some("1") | None => o.volatile = false,
                _ => return Err(OptionError::BadValue(key.into())),
            },
            "threads" => {
                o.threads = value
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| OptionError::BadValue(key.into()))?
            }
            "timeout" => {
                let secs: f64 = value
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s >= 0.0)
                    .ok_or_else(|| OptionError::BadValue(key.into()))?;
                o.ttl_upper = Duration::from_secs_f64(secs);
            }
            "uidmapping" | "gidmapping" => {
                let map = IdMap::parse(value.unwrap_or_default())
                    .map_err(|e| OptionError::BadValue(format!("{key} ({e})")))?;
                if key == "uidmapping" {
                    o.uid_map = map;
                } else {
                    o.gid_map = map;
                }
            }
            k if UNSUPPORTED.contains(&k) => return Err(OptionError::Unsupported(opt.into())),
            k if IGNORED.contains(&k) || k.starts_with("x-") => {
                tracing::debug!(option = opt, "ignored");
            }
            _ => return Err(OptionError::Unknown(opt.into())),
        }
    }
    let lowers = lowers
        .filter(|l| !l.is_empty())
        .ok_or(OptionError::Missing("lowerdir"))?;
    // Without upperdir (and workdir): a read-only overlay of the lower layers, as
    // fuse-overlayfs and kernel overlayfs do.
    let layers = match (upper, work) {
        (Some(upper), Some(work)) => Layers::writable(lowers, upper, work),
        (None, None) => Layers::read_only(lowers),
        (Some(_), None) => return Err(OptionError::Missing("workdir")),
        (None, Some(_)) => return Err(OptionError::Missing("upperdir")),
    };
    Ok(Parsed { layers, options: o })
}

/// Mounts and serves in this process until unmounted (or SIGINT/SIGTERM/SIGHUP, which
/// unmount). `mounted` is called once the mount is up.
pub fn serve(parsed: &Parsed, target: &Path, mounted: impl FnOnce()) -> anyhow::Result<()> {
    // Signals are taken by one thread; every other thread (the FUSE workers) inherits
    // the blocked mask.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGHUP);
    sigs.thread_block()?;
    use anyhow::Context;
    // Where the mount will be, by its own name (the target may be given as a
    // /proc/<pid>/fd/<n> link to a directory the caller resolved): what a signal
    // unmounts later, when that link may be gone.
    let target_owned = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let fs = fuse_fs(&parsed.layers, &parsed.options).context("overlay layers")?;
    let (mut session, user) =
        fuse_session(fs, target, &parsed.options, parsed.layers.is_read_only())
            .with_context(|| format!("mounting at {}", target.display()))?;
    mounted();
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = sigs.wait() {
                tracing::info!(?sig, "unmounting");
                if user {
                    if super::sys::fusermount_unmount(&target_owned, false).is_err() {
                        let _ = super::sys::fusermount_unmount(&target_owned, true);
                    }
                } else if unmounter.unmount().is_err() {
                    let _ = nix::mount::umount2(&target_owned, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })?;
    session.run()?;
    Ok(())
}

fn pipe() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((r.into(), w.into()))
}

fn to_dev_null() -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let target = cli.paths.last().cloned().unwrap_or_default();
    let cwd = std::env::current_dir()?;
    let target = cwd.join(target);
    let parsed = parse_options(&cli.options, &cwd)?;
    if cli.foreground || cli.debug {
        return serve(&parsed, &target, || {});
    }
    let (mut r, w) = pipe()?;
    match fork_process()? {
        Forked::Parent(_) => {
            drop(w);
            let mut msg = String::new();
            r.read_to_string(&mut msg)?;
            if msg == "ok" {
                Ok(())
            } else if msg.is_empty() {
                anyhow::bail!("stowage-overlay daemon exited before mounting")
            } else {
                anyhow::bail!("{msg}")
            }
        }
        Forked::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            // The only write end of the pipe: written once, then closed, so the parent
            // sees end-of-file whatever happens to this process.
            let mut notify = Some(w);
            let result = serve(&parsed, &target, || {
                if let Some(mut w) = notify.take() {
                    let _ = w.write_all(b"ok");
                }
                let _ = to_dev_null();
            });
            if let (Err(e), Some(mut w)) = (&result, notify.take()) {
                // The parent reports it; saying it here too would print it twice.
                let _ = write!(w, "{e:#}");
                std::process::exit(1);
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str]) -> Result<Parsed, OptionError> {
        let v: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        parse_options(&v, Path::new("/cwd"))
    }

    #[test]
    fn fuse_overlayfs_style_options() {
        let p =
            parse(&["lowerdir=/a:b\\:c:/d,upperdir=u,workdir=/w,nodev,noexec,threads=3"]).unwrap();
        assert_eq!(
            p.layers.lowers,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/cwd/b:c"),
                PathBuf::from("/d")
            ]
        );
        assert_eq!(p.layers.upper, Some(PathBuf::from("/cwd/u")));
        assert_eq!(p.layers.work, Some(PathBuf::from("/w")));
        assert!(p.options.suid);
        assert!(!p.options.dev);
        assert!(!p.options.exec);
        assert_eq!(p.options.threads, 3);
    }

    #[test]
    fn mount_helper_style_repeated_options() {
        let p = parse(&[
            "rw,nosuid",
            "lowerdir=/l",
            "upperdir=/u,workdir=/w,x-foo=1,context=\"x\"",
        ])
        .unwrap();
        assert!(!p.options.suid);
        assert_eq!(p.layers.lowers, vec![PathBuf::from("/l")]);
    }

    #[test]
    fn lowerdir_alone_is_a_read_only_overlay() {
        let p = parse(&["lowerdir=/a:/b,nodev"]).unwrap();
        assert!(p.layers.is_read_only());
        assert_eq!(
            p.layers.lowers,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(matches!(
            parse(&["lowerdir=/l,upperdir=/u"]),
            Err(OptionError::Missing("workdir"))
        ));
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(matches!(
            parse(&["lowerdir=/l,workdir=/w"]),
            Err(OptionError::Missing("upperdir"))
        ));
        assert!(matches!(
            parse(&["upperdir=/u,workdir=/w"]),
            Err(OptionError::Missing("lowerdir"))
        ));
        assert!(matches!(
            parse(&["lowerdir=/l,upperdir=/u,workdir=/w,frobnicate"]),
            Err(OptionError::Unknown(_))
        ));
        assert!(matches!(
            parse(&["lowerdir=/l,upperdir=/u,workdir=/w,squash_to_root"]),
            Err(OptionError::Unsupported(_))
        ));
        for bad in [
            "uidmapping=0:1000",
            "gidmapping=0:1000:0",
            "uidmapping=0:1:5:2:9:1",
        ] {
            assert!(
                matches!(
                    parse(&[&format!("lowerdir=/l,upperdir=/u,workdir=/w,{bad}")]),
                    Err(OptionError::BadValue(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(&["lowerdir=/l,upperdir=/u,workdir=/w,threads=0"]),
            Err(OptionError::BadValue(_))
        ));
    }

    #[test]
    fn volatile_and_fsync_options() {
        let base = "lowerdir=/l,upperdir=/u,workdir=/w";
        assert!(!parse(&[base]).unwrap().options.volatile);
        assert!(
            parse(&[&format!("{base},volatile")])
                .unwrap()
                .options
                .volatile
        );
        assert!(
            parse(&[&format!("{base},fsync=0")])
                .unwrap()
                .options
                .volatile
        );
        assert!(
            !parse(&[&format!("{base},fsync=1")])
                .unwrap()
                .options
                .volatile
        );
        assert!(matches!(
            parse(&[&format!("{base},fsync=maybe")]),
            Err(OptionError::BadValue(_))
        ));
    }

    #[test]
    fn id_mappings_in_both_notations() {
        let p = parse(&[
            "lowerdir=/l,upperdir=/u,workdir=/w,uidmapping=0:1000:1:1:110000:65536,gidmapping=0:1000:1,1:110000:65536,nodev",
        ])
        .unwrap();
        let want = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!(p.options.uid_map, want);
        assert_eq!(p.options.gid_map, want);
        assert!(!p.options.dev);
        // Two triples after one comma.
        let p = parse(&[
            "lowerdir=/l,upperdir=/u,workdir=/w,uidmapping=0:1000:1,1:110000:65536:70000:300000:5",
        ])
        .unwrap();
        assert_eq!(p.options.uid_map.shown(70004), 300004);
        assert_eq!(p.options.uid_map.shown(1), 110000);
        let p = parse(&["lowerdir=/l,upperdir=/u,workdir=/w"]).unwrap();
        assert!(p.options.uid_map.is_identity() && p.options.gid_map.is_identity());
    }

    #[test]
    fn command_line_forms() {
        let c =
            Cli::try_parse_from(["stowage-overlay", "-o", "lowerdir=/l", "-f", "/mnt"]).unwrap();
        assert!(c.foreground);
        assert_eq!(c.paths, vec![PathBuf::from("/mnt")]);
        let c = Cli::try_parse_from(["stowage-overlay", "overlay", "/mnt", "-o", "rw,lowerdir=/l"])
            .unwrap();
        assert_eq!(c.paths.last(), Some(&PathBuf::from("/mnt")));
        assert_eq!(c.options, vec!["rw,lowerdir=/l".to_string()]);
        let c = Cli::try_parse_from(["stowage-overlay", "-olowerdir=/l", "/mnt"]).unwrap();
        assert_eq!(c.options, vec!["lowerdir=/l".to_string()]);
        assert!(Cli::try_parse_from(["stowage-overlay", "-o", "x"]).is_err());
    }
}
