//! Podman as a real client of the volume plugin protocol: `podman volume create
//! --driver stowage`, two containers that write and read a file on the volume, and
//! `podman volume rm`. Podman runs with its own configuration (CONTAINERS_CONF: Podman
//! 4.3 has no CONTAINERS_CONF_OVERRIDE), storage (--root/--runroot, vfs) and file locks,
//! all in a temporary directory, with runc (crun fails on this machine's hybrid cgroups)
//! and default ulimits below the machine's hard limits. The image is a busybox-static
//! root filesystem imported from a tarball, so no registry is needed.
//!
//! Needs root, `podman`, `runc` and `busybox-static` (hack/test.sh installs them); fails
//! loudly without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stowage_tests::{Daemon, cleanup_under, mounts_under, require_root};

const IMAGE: &str = "localhost/stowage-bb";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 5] = ["sh", "cat", "echo", "ls", "grep"];
/// What rootful Podman creates outside its --root/--runroot whatever it is told: the
/// image import's blob-info cache, netavark's run directory and runc's state root.
/// Deepest first; the test removes those that did not exist before it, when empty.
const HOST_PATHS: [&str; 6] = [
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
    "/var/lib/containers/cache",
    "/var/lib/containers",
    "/run/containers/networks",
    "/run/containers",
    "/run/runc",
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Panics with what to install unless podman, runc and busybox are here.
fn require_tools() {
    let missing: Vec<&str> = ["podman", "runc", "conmon"]
        .into_iter()
        .filter(|t| !on_path(t) && !Path::new("/usr/libexec/podman").join(t).is_file())
        .chain((!Path::new(BUSYBOX).is_file()).then_some(BUSYBOX))
        .collect();
    assert!(
        missing.is_empty(),
        "the Podman end-to-end test needs {missing:?}: install the Debian packages \
         podman, runc and busybox-static (hack/test.sh's APT_PACKAGES does). It is not \
         skipped on purpose."
    );
}

/// A Podman whose configuration, storage, locks and temporary files all live in one
/// temporary directory; its Drop removes containers, volumes and images, unmounts what
/// is left there and removes the host paths Podman created.
struct Podman {
    dir: tempfile::TempDir,
    created_on_host: Vec<PathBuf>,
}

impl Podman {
    /// Podman configured with the volume plugin `stowage` at `plugin_socket`.
    fn new(plugin_socket: &Path) -> Podman {
        let created_on_host = HOST_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("stowage-podman-")
            .tempdir()
            .expect("temp dir");
        let podman = Podman {
            dir,
            created_on_host,
        };
        let d = podman.dir.path();
        for sub in ["root", "runroot", "tmp", "volumes", "networks"] {
            std::fs::create_dir(d.join(sub)).expect("podman dir");
        }
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{d}/tmp"
image_copy_tmp_dir = "{d}/tmp"
volume_path = "{d}/volumes"
volume_plugin_timeout = 60

[engine.volume_plugins]
stowage = "{sock}"

[network]
network_config_dir = "{d}/networks"
"#,
            d = d.display(),
            sock = plugin_socket.display()
        );
        std::fs::write(d.join("containers.conf"), conf).expect("containers.conf");
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/root\"\n",
            d = d.display()
        );
        std::fs::write(d.join("storage.conf"), storage).expect("storage.conf");
        podman
    }

    fn output(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("run podman")
    }

    /// Runs podman with `args`; panics with its stderr unless it succeeds; returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports a busybox root filesystem (busybox + applet links) as [`IMAGE`].
    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet link");
        }
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar of the busybox rootfs failed");
        self.run(&["import", tar.to_str().expect("utf-8 path"), IMAGE]);
    }

    /// Runs `script` in a throwaway container with volume `vol` at /data; returns stdout.
    fn sh_with_volume(&self, vol: &str, script: &str) -> String {
        let mount = format!("{vol}:/data");
        self.run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["volume", "rm", "--all", "--force"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            let out = self.output(args);
            if !out.status.success() {
                eprintln!(
                    "cleanup: podman {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        cleanup_under(self.dir.path());
        for p in &self.created_on_host {
            let removed = match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => continue,
            };
            if let Err(e) = removed {
                eprintln!("cleanup: {} left in place: {e}", p.display());
            }
        }
    }
}

#[tokio::test]
async fn podman_runs_containers_on_a_stowage_volume() {
    require_root();
    require_tools();
    // Declared first, dropped last: Podman's cleanup still reaches the daemon.
    let sock_dir = tempfile::Builder::new()
        .prefix("stowage-plugin-")
        .tempdir()
        .expect("temp dir");
    let socket = sock_dir.path().join("plugin.sock");
    let daemon = Daemon::start(
        "4GiB",
        &["--plugin-socket", socket.to_str().expect("utf-8 path")],
    );
    assert!(
        socket.exists(),
        "plugin socket {} missing",
        socket.display()
    );
    let podman = Podman::new(&socket);
    let mut csi = daemon.clients().await;
    podman.import_busybox();
    let plugin_mounts = daemon.state_dir().join("plugin");
    let unstaged = |when: &str| {
        assert!(
            daemon.volume_loops().is_empty(),
            "{when}: a loop device is still attached:\n{}",
            daemon.log()
        );
        assert!(
            mounts_under(&plugin_mounts).is_empty(),
            "{when}: still mounted: {:?}",
            mounts_under(&plugin_mounts)
        );
    };

    let created = podman.run(&[
        "volume",
        "create",
        "--driver",
        "stowage",
        "-o",
        "size=64MiB",
        "-o",
        "kind=loop",
        "testvol",
    ]);
    assert_eq!(created.trim(), "testvol");
    assert_eq!(csi.list_ids().await.len(), 1, "the daemon has the volume");

    // A bad option comes back as the plugin's Err.
    let bad = podman.output(&[
        "volume",
        "create",
        "--driver",
        "stowage",
        "-o",
        "colour=red",
        "badvol",
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("unknown option \"colour\""), "{stderr}");

    podman.sh_with_volume("testvol", "echo hello > /data/f");
    unstaged("after the first container");

    let out = podman.sh_with_volume("testvol", "cat /data/f; grep ' /data ' /proc/mounts");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello"), "{out}");
    assert!(
        lines.any(|l| l.contains(" /data ext4 ")),
        "/data is the volume's ext4 filesystem:\n{out}"
    );
    unstaged("after the second container");

    let driver = podman.run(&["volume", "inspect", "testvol", "--format", "{{.Driver}}"]);
    assert_eq!(driver.trim(), "stowage");
    let log = daemon.log();
    for call in [
        "VolumeDriver.Create",
        "VolumeDriver.Mount",
        "VolumeDriver.Unmount",
    ] {
        assert!(log.contains(call), "no {call} in the daemon log:\n{log}");
    }

    podman.run(&["volume", "rm", "testvol"]);
    assert!(
        !podman.run(&["volume", "ls", "-q"]).contains("testvol"),
        "podman still lists testvol"
    );
    assert!(csi.list_ids().await.is_empty(), "the daemon still has it");
    assert!(
        !plugin_mounts.exists() || std::fs::read_dir(&plugin_mounts).unwrap().next().is_none(),
        "mount points left in {}",
        plugin_mounts.display()
    );
}
