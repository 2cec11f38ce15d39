//! The two hosts: their daemons, `vol` on each, helper processes, syncing and
//! settling pools, and CPU time of the daemons.

use super::*;

/// Host `i`'s daemon: node `NAMES[i]`, peer service on its address, the other host
/// as its peer.
pub(crate) fn host(cluster: &Cluster, i: usize, secret: &Path) -> Daemon {
    let prefix = cluster.prefix(i);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let listen = format!("{}:{PORT}", cluster.addr(i));
    let other = 1 - i;
    let peer = format!("{}={}:{PORT}", NAMES[other], cluster.addr(other));
    let secret = secret.display().to_string();
    Daemon::start_as(
        &prefix,
        NAMES[i],
        "8GiB",
        &[
            "--peer-listen",
            &listen,
            "--cluster-secret-file",
            &secret,
            "--peer",
            &peer,
        ],
    )
}

// ---------------------------------------------------------------------------------
// vol, processes, caches
// ---------------------------------------------------------------------------------

/// The `vol` next to the stowaged under test ($VOL_BIN overrides).
pub(crate) fn vol_bin() -> PathBuf {
    let p = std::env::var_os("VOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| stowaged_bin().with_file_name("vol"));
    assert!(
        p.exists(),
        "{} missing (hack/bench/replication builds it)",
        p.display()
    );
    p
}

/// Runs `vol --socket <d's> --output json ARGS`, which must succeed; one value per line.
pub(crate) fn vol(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let out = Command::new(vol_bin())
        .arg("--socket")
        .arg(d.socket())
        .args(["--output", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vol");
    assert!(
        out.status.success(),
        "vol {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("vol {args:?}: not JSON ({e}): {l}"))
        })
        .collect()
}

/// A child process killed (and reaped) when dropped, unless taken out first.
#[derive(Debug)]
pub(crate) struct ChildGuard(pub(crate) Option<Child>);

impl ChildGuard {
    pub(crate) fn take(mut self) -> Child {
        self.0.take().expect("child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn syncfs(path: &Path) -> Duration {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let start = Instant::now();
    nix::unistd::syncfs(&f).unwrap_or_else(|e| panic!("syncfs {}: {e}", path.display()));
    start.elapsed()
}

/// Writes back everything and waits for deleted subvolumes to be cleaned, then (unless
/// `warm`) drops the page cache, so the next step starts cold and alone.
pub(crate) fn settle(pools: &[PathBuf], warm: bool) {
    for p in pools {
        let status = Command::new("btrfs")
            .args(["subvolume", "sync"])
            .arg(p)
            .stdout(Stdio::null())
            .status()
            .expect("run btrfs subvolume sync");
        assert!(
            status.success(),
            "btrfs subvolume sync {}: {status}",
            p.display()
        );
        syncfs(p);
    }
    nix::unistd::sync();
    if !warm {
        std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop caches");
    }
}

/// Ticks per second of /proc/<pid>/stat times.
pub(crate) fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// CPU seconds of process `pid` (`self`): its own (user + system) and that of its
/// reaped children.
pub(crate) fn cpu_secs(pid: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(") ") else {
        return (0.0, 0.0);
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 15 {
        return (0.0, 0.0);
    }
    // Fields 14-17 of stat (utime, stime, cutime, cstime), counted after the state.
    let t = clock_ticks();
    ((f[11] + f[12]) / t, (f[13] + f[14]) / t)
}

/// The pid of `d`'s stowaged (found by its --state-dir).
pub(crate) fn daemon_pid(d: &Daemon) -> String {
    let want = d.state_dir().display().to_string();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_daemon = args.first().is_some_and(|a| a.ends_with(b"stowaged"));
        if is_daemon
            && args
                .windows(2)
                .any(|w| w[0] == b"--state-dir" && w[1] == want.as_bytes())
        {
            return name;
        }
    }
    panic!("no stowaged with --state-dir {want}");
}

/// CPU used by both daemons (own, and their reaped children: btrfs send/receive)
/// while `f` runs.
pub(crate) fn with_cpu<T>(pids: &[String; 2], f: impl FnOnce() -> T) -> (T, [f64; 4]) {
    let before = [cpu_secs(&pids[0]), cpu_secs(&pids[1])];
    let out = f();
    let after = [cpu_secs(&pids[0]), cpu_secs(&pids[1])];
    (
        out,
        [
            after[0].0 - before[0].0,
            after[0].1 - before[0].1,
            after[1].0 - before[1].0,
            after[1].1 - before[1].1,
        ],
    )
}

// ---------------------------------------------------------------------------------
// data
// ---------------------------------------------------------------------------------
