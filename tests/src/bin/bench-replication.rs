//! Replication benchmark: what shipping a volume to another node costs, on two hosts
//! (network namespaces on a bridge, each with its own `stowaged` and embedded btrfs
//! pool, peers of each other on port 7420).
//!
//! 1. **Full sync.** A directory volume on host `a` holds `--data-mib` (1 GiB) of
//!    incompressible data in 4 files, written and fsynced. `--runs` times: caches
//!    dropped, `vol replicate VOL --to b` (a full `btrfs send` stream, since `b` holds
//!    nothing; the replica is removed with `vol replica rm` between runs) is timed, then
//!    syncfs of `b`'s pool (what the acknowledgement left unwritten); then, caches
//!    dropped again, a plain byte copy of the same files over the same link: this
//!    binary, run in `b`'s namespace, accepts one TCP connection and writes what comes
//!    into one file on `b`'s pool, then fsyncs it; run in `a`'s namespace it reads the
//!    volume's files and writes them to the socket (1 MiB read/write calls on both
//!    sides, no hashing). The ratio is replicate time / plain copy time.
//! 2. **Incremental sync.** `--incr-runs` times: `--change-percent` (1%) of the data is
//!    overwritten in 64 KiB blocks at distinct random offsets, fsynced, caches dropped,
//!    and `vol replicate` (now incremental) is timed. Bytes sent and time are compared
//!    with the full sync's medians. The replica's newest snapshot must then hold exactly
//!    the source's bytes.
//! 3. **Lag under a steady write load.** A volume with `replicas=2` and
//!    `replicationInterval=2s` (the schedule, not `vol replicate`); once its first copy
//!    is in sync, a writer overwrites a 128 MiB region of one file at `--load-mib-s`
//!    (8 MiB/s) in 1 MiB writes for `--load-secs` (30 s), and every second fdatasyncs it
//!    and writes a sequence number into a marker file (fdatasynced too). Every 250 ms
//!    the bench reads `vol inspect` on `a` (lag_seconds, lag_bytes, state) and, on `b`,
//!    the marker in the replica's newest snapshot (`vol replica ls` latest_path). It
//!    reports the largest lag_seconds and lag_bytes seen and, per marker, the time from
//!    its fdatasync returning to the first sample that saw it on the replica.
//!
//! `--rate 1gbit` limits what host `a` sends (tc tbf); without it the link is a veth
//! pair through a bridge. `--json` prints one JSON object instead of tables. Daemons,
//! pools, namespaces and helper processes are removed at the end, also on a panic.
//!
//! Needs root (network namespaces, loop devices, mounts). Run it on demand:
//!
//! ```text
//! sudo hack/bench/replication [--runs 2] [--incr-runs 3] [--load-secs 30] [--json]
//! ```

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use stowage_tests::cluster::Cluster;
use stowage_tests::{Daemon, stowaged_bin};

/// Times full and incremental replication against a plain TCP copy, and the lag of
/// scheduled replication under a steady write load, between two hosts.
#[derive(Debug, Parser)]
struct Args {
    /// Data written into the replicated volume, MiB (incompressible).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..))]
    data_mib: u64,
    /// Full syncs (each followed by a plain copy).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Incremental syncs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    incr_runs: u32,
    /// Share of the data overwritten before each incremental sync, percent.
    #[arg(long, default_value_t = 1.0)]
    change_percent: f64,
    /// Limit what host a sends to this rate (tc syntax, e.g. 1gbit); none by default.
    #[arg(long)]
    rate: Option<String>,
    /// Steady load: write rate, MiB/s.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    load_mib_s: u64,
    /// Steady load: duration, seconds (0 skips the steady-load part).
    #[arg(long, default_value_t = 30)]
    load_secs: u64,
    /// Steady load: replicationInterval of the volume, seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    interval_secs: u64,
    /// Steady load: `vol inspect` sampling period, milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..))]
    sample_ms: u64,
    /// Keep the page cache between steps (by default every timed transfer starts cold:
    /// sync, then drop_caches).
    #[arg(long)]
    warm: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

const MIB: u64 = 1 << 20;
/// Files the data of the full-sync volume is spread over.
const FILES: u64 = 4;
/// Directory inside the volume holding them.
const DATA_DIR: &str = "data";
/// Size of one overwrite before an incremental sync.
const BLOCK: u64 = 64 << 10;
/// Peer service port in each namespace.
const PORT: u16 = 7420;
/// Port of the plain copy's receiver.
const PLAIN_PORT: u16 = 9000;
/// Node ids of the two hosts.
const NAMES: [&str; 2] = ["a", "b"];
/// Subnet of the bench's bridge (10.<NET>.0.0/24).
const NET: u8 = 233;
/// Region of the load file the steady writer cycles over.
const LOAD_REGION_MIB: u64 = 128;
/// How long the steady-load part waits for the replica to catch up after the load.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Hidden first arguments that run this binary as one end of the plain copy.
const HELPER_RECV: &str = "__plain-recv";
const HELPER_SEND: &str = "__plain-send";

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(HELPER_RECV) if argv.len() == 4 => return plain_recv(&argv[2], Path::new(&argv[3])),
        Some(HELPER_SEND) if argv.len() >= 4 => return plain_send(&argv[2], &argv[3..]),
        _ => {}
    }
    let args = Args::parse();
    let started = Instant::now();

    // Declared first, dropped last: the daemons stop before their namespaces go.
    let keys = tempfile::tempdir().expect("temp dir");
    let secret = keys.path().join("secret");
    std::fs::write(&secret, "bench-replication-secret\n").expect("write secret");
    let cluster = Cluster::new(2, NET);
    if let Some(rate) = &args.rate {
        cluster.limit_egress(0, rate);
    }
    let hosts = [host(&cluster, 0, &secret), host(&cluster, 1, &secret)];
    let pools = [
        hosts[0].state_dir().join("pool"),
        hosts[1].state_dir().join("pool"),
    ];
    eprintln!(
        "two hosts up: a {} and b {} (netns {}, {}), pools {} and {}",
        cluster.addr(0),
        cluster.addr(1),
        cluster.netns(0),
        cluster.netns(1),
        pools[0].display(),
        pools[1].display()
    );

    let full = full_sync(&args, &cluster, &hosts, &pools);
    let incr = incremental_sync(&args, &hosts, &pools, &full);
    let load = (args.load_secs > 0).then(|| steady_load(&args, &hosts));

    let total = started.elapsed();
    if args.json {
        let out = json!({
            "config": {
                "data_bytes": args.data_mib * MIB,
                "volume_bytes": volume_bytes(&args),
                "files": FILES,
                "runs": args.runs,
                "incr_runs": args.incr_runs,
                "change_percent": args.change_percent,
                "rate": args.rate,
                "cold_caches": !args.warm,
                "load_mib_s": args.load_mib_s,
                "load_secs": args.load_secs,
                "interval_secs": args.interval_secs,
                "sample_ms": args.sample_ms,
            },
            "full": full.to_json(),
            "incremental": incr.to_json(&full),
            "steady_load": load.as_ref().map(Load::to_json),
            "total_secs": total.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        print_full(&args, &full);
        print_incremental(&args, &incr, &full);
        if let Some(load) = &load {
            print_load(&args, load);
        }
        println!("\ntotal bench time {:.0} s", total.as_secs_f64());
    }
}

/// Host `i`'s daemon: node `NAMES[i]`, peer service on its address, the other host
/// as its peer.
fn host(cluster: &Cluster, i: usize, secret: &Path) -> Daemon {
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
fn vol_bin() -> PathBuf {
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
fn vol(d: &Daemon, args: &[&str]) -> Vec<Value> {
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
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn take(mut self) -> Child {
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

fn syncfs(path: &Path) -> Duration {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let start = Instant::now();
    nix::unistd::syncfs(&f).unwrap_or_else(|e| panic!("syncfs {}: {e}", path.display()));
    start.elapsed()
}

/// Writes back everything and waits for deleted subvolumes to be cleaned, then (unless
/// `warm`) drops the page cache, so the next step starts cold and alone.
fn settle(pools: &[PathBuf], warm: bool) {
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
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// CPU seconds of process `pid` (`self`): its own (user + system) and that of its
/// reaped children.
fn cpu_secs(pid: &str) -> (f64, f64) {
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
fn daemon_pid(d: &Daemon) -> String {
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
fn with_cpu<T>(pids: &[String; 2], f: impl FnOnce() -> T) -> (T, [f64; 4]) {
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

/// xorshift64: fast incompressible bytes.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for w in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            w.copy_from_slice(&v[..w.len()]);
        }
    }
}

fn data_files(vol_dir: &Path) -> Vec<PathBuf> {
    (0..FILES)
        .map(|i| vol_dir.join(DATA_DIR).join(format!("part-{i}.bin")))
        .collect()
}

/// Capacity of the full-sync volume: the data plus 1/8 for btrfs metadata and
/// copy-on-write room (a qgroup limit counts both).
fn volume_bytes(args: &Args) -> u64 {
    args.data_mib * MIB + args.data_mib * MIB / 8
}

/// Writes `total` bytes of incompressible data into the data files of `vol_dir`, then
/// fsyncs files and directory.
fn write_data(vol_dir: &Path, total: u64) {
    let dir = vol_dir.join(DATA_DIR);
    std::fs::create_dir_all(&dir).expect("create data dir");
    let per_file = total / FILES;
    let mut rng = Rng::new(1);
    let mut buf = vec![0u8; MIB as usize];
    for path in data_files(vol_dir) {
        let mut f =
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut left = per_file;
        while left > 0 {
            let n = left.min(MIB) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            left -= n as u64;
        }
        f.sync_all().expect("fsync data");
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .expect("fsync data dir");
}

/// Overwrites `bytes` (rounded up to whole 64 KiB blocks) at distinct random
/// block-aligned offsets of the data files, then fsyncs them. Returns the bytes
/// overwritten.
fn scatter(vol_dir: &Path, total: u64, bytes: u64, seed: u64) -> u64 {
    let per_file = total / FILES;
    let blocks_per_file = per_file / BLOCK;
    let count = bytes.div_ceil(BLOCK).min(blocks_per_file * FILES);
    let mut rng = Rng::new(seed);
    let mut chosen = HashSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(rng.next() % (blocks_per_file * FILES));
    }
    let files: Vec<File> = data_files(vol_dir)
        .iter()
        .map(|p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        })
        .collect();
    let mut buf = vec![0u8; BLOCK as usize];
    let mut blocks: Vec<u64> = chosen.into_iter().collect();
    blocks.sort_unstable();
    for b in &blocks {
        rng.fill(&mut buf);
        let (file, block) = (b / blocks_per_file, b % blocks_per_file);
        files[file as usize]
            .write_all_at(&buf, block * BLOCK)
            .expect("overwrite block");
    }
    for f in &files {
        f.sync_all().expect("fsync data");
    }
    count * BLOCK
}

/// Panics unless every data file of `a` equals the one of `b`, byte for byte.
fn assert_same(a: &Path, b: &Path) {
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    for (pa, pb) in data_files(a).iter().zip(data_files(b).iter()) {
        let mut fa = File::open(pa).unwrap_or_else(|e| panic!("open {}: {e}", pa.display()));
        let mut fb = File::open(pb).unwrap_or_else(|e| panic!("open {}: {e}", pb.display()));
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut fa, &mut x);
            let m = read_full(&mut fb, &mut y);
            assert!(
                n == m && x[..n] == y[..m],
                "{} and {} differ near byte {offset}",
                pa.display(),
                pb.display()
            );
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------------
// the plain copy (this binary as helper, in each namespace)
// ---------------------------------------------------------------------------------

/// What one end of the plain copy reports (one JSON line on stdout).
fn helper_report(bytes: u64, secs: f64, extra: Value) {
    let (cpu, _) = cpu_secs("self");
    let line = json!({"bytes": bytes, "secs": secs, "cpu_secs": cpu, "extra": extra});
    println!("{line}");
}

/// Receiver: accepts one connection on `addr`, writes what arrives into `dest`
/// (created or truncated), fsyncs it, reports.
fn plain_recv(addr: &str, dest: &Path) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("listening");
    std::io::stdout().flush().expect("stdout");
    let (mut sock, _) = listener.accept().expect("accept");
    let start = Instant::now();
    let mut f = File::create(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut bytes = 0u64;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read socket: {e}"),
        };
        f.write_all(&buf[..n]).expect("write copy");
        bytes += n as u64;
    }
    let fsync_start = Instant::now();
    f.sync_all().expect("fsync copy");
    let fsync = fsync_start.elapsed().as_secs_f64();
    helper_report(
        bytes,
        start.elapsed().as_secs_f64(),
        json!({"fsync_secs": fsync}),
    );
}

/// Sender: connects to `addr` and writes `files` into the socket, one after the other.
fn plain_send(addr: &str, files: &[String]) {
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut buf = vec![0u8; MIB as usize];
    let mut bytes = 0u64;
    for p in files {
        let mut f = File::open(p).unwrap_or_else(|e| panic!("open {p}: {e}"));
        loop {
            let n = read_full(&mut f, &mut buf);
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n]).expect("write socket");
            bytes += n as u64;
        }
    }
    sock.shutdown(Shutdown::Write).expect("shutdown socket");
    helper_report(bytes, start.elapsed().as_secs_f64(), Value::Null);
}

/// One plain copy of `files` from host 0 to `dest` on host 1.
#[derive(Debug, Clone)]
struct Plain {
    /// From starting the sender to the receiver's fsync returning.
    secs: f64,
    bytes: u64,
    fsync_secs: f64,
    send_cpu: f64,
    recv_cpu: f64,
}

fn helper(ns: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("own path");
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    c
}

fn plain_copy(cluster: &Cluster, files: &[PathBuf], dest: &Path) -> Plain {
    let addr = format!("{}:{PLAIN_PORT}", cluster.addr(1));
    let dest_s = dest.display().to_string();
    let mut recv = ChildGuard(Some(
        helper(&cluster.netns(1), &[HELPER_RECV, &addr, &dest_s])
            .spawn()
            .expect("spawn plain receiver"),
    ));
    let mut out = BufReader::new(
        recv.0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("receiver stdout"),
    );
    let mut line = String::new();
    out.read_line(&mut line).expect("receiver ready");
    assert_eq!(line.trim(), "listening", "plain receiver did not start");
    let start = Instant::now();
    let mut send_args = vec![HELPER_SEND.to_string(), addr.clone()];
    send_args.extend(files.iter().map(|p| p.display().to_string()));
    let send_args: Vec<&str> = send_args.iter().map(String::as_str).collect();
    let sent = helper(&cluster.netns(0), &send_args)
        .output()
        .expect("run plain sender");
    assert!(sent.status.success(), "plain sender: {}", sent.status);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("receiver report");
    let status = recv.take().wait().expect("wait for receiver");
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "plain receiver: {status}");
    let got: Value = serde_json::from_str(rest.trim()).expect("receiver report JSON");
    let sent: Value = serde_json::from_slice(&sent.stdout).expect("sender report JSON");
    assert_eq!(got["bytes"], sent["bytes"], "plain copy lost bytes");
    Plain {
        secs,
        bytes: got["bytes"].as_u64().unwrap_or(0),
        fsync_secs: got["extra"]["fsync_secs"].as_f64().unwrap_or(0.0),
        send_cpu: sent["cpu_secs"].as_f64().unwrap_or(0.0),
        recv_cpu: got["cpu_secs"].as_f64().unwrap_or(0.0),
    }
}

// ---------------------------------------------------------------------------------
// 1. full sync
// ---------------------------------------------------------------------------------

/// One `vol replicate`.
#[derive(Debug, Clone)]
struct Sync {
    /// The command, from start to the peer's acknowledgement.
    secs: f64,
    bytes_sent: u64,
    snapshot: String,
    parent: String,
    /// syncfs of the replica's pool right after.
    syncfs_secs: f64,
    /// CPU seconds: a's stowaged, its children (btrfs send), b's, its children
    /// (btrfs receive).
    cpu: [f64; 4],
}

impl Sync {
    fn to_json(&self) -> Value {
        json!({
            "secs": self.secs,
            "bytes_sent": self.bytes_sent,
            "mb_s": mb_s(self.bytes_sent, self.secs),
            "snapshot": self.snapshot,
            "parent": self.parent,
            "replica_syncfs_secs": self.syncfs_secs,
            "cpu_secs": {
                "a_stowaged": self.cpu[0],
                "a_btrfs_send": self.cpu[1],
                "b_stowaged": self.cpu[2],
                "b_btrfs_receive": self.cpu[3],
            },
        })
    }
}

#[derive(Debug)]
struct Full {
    volume_id: String,
    data_bytes: u64,
    write_secs: f64,
    syncs: Vec<Sync>,
    plains: Vec<Plain>,
}

impl Full {
    fn sync_secs(&self) -> f64 {
        median(self.syncs.iter().map(|s| s.secs))
    }

    fn plain_secs(&self) -> f64 {
        median(self.plains.iter().map(|p| p.secs))
    }

    fn bytes_sent(&self) -> u64 {
        median(self.syncs.iter().map(|s| s.bytes_sent as f64)) as u64
    }

    fn to_json(&self) -> Value {
        let synced = median(self.syncs.iter().map(|s| s.secs + s.syncfs_secs));
        json!({
            "volume_id": self.volume_id,
            "data_bytes": self.data_bytes,
            "write_secs": self.write_secs,
            "replicate": self.syncs.iter().map(Sync::to_json).collect::<Vec<_>>(),
            "plain_copy": self.plains.iter().map(|p| json!({
                "secs": p.secs,
                "bytes": p.bytes,
                "mb_s": mb_s(p.bytes, p.secs),
                "fsync_secs": p.fsync_secs,
                "cpu_secs": {"sender": p.send_cpu, "receiver": p.recv_cpu},
            })).collect::<Vec<_>>(),
            "median_replicate_secs": self.sync_secs(),
            "median_replicate_plus_syncfs_secs": synced,
            "median_plain_secs": self.plain_secs(),
            "ratio_replicate_to_plain": self.sync_secs() / self.plain_secs(),
            "ratio_replicate_plus_syncfs_to_plain": synced / self.plain_secs(),
        })
    }
}

/// `vol replicate NAME --to b`, timed, then syncfs of b's pool.
fn replicate(hosts: &[Daemon; 2], pids: &[String; 2], name: &str, pool_b: &Path) -> Sync {
    let ((secs, answer), cpu) = with_cpu(pids, || {
        let start = Instant::now();
        let answer = vol(&hosts[0], &["replicate", name, "--to", NAMES[1]]).remove(0);
        (start.elapsed().as_secs_f64(), answer)
    });
    let syncfs_secs = syncfs(pool_b).as_secs_f64();
    Sync {
        secs,
        bytes_sent: answer["bytes_sent"].as_u64().expect("bytes_sent"),
        snapshot: answer["snapshot"].as_str().unwrap_or_default().to_string(),
        parent: answer["parent"].as_str().unwrap_or_default().to_string(),
        syncfs_secs,
        cpu,
    }
}

fn full_sync(args: &Args, cluster: &Cluster, hosts: &[Daemon; 2], pools: &[PathBuf; 2]) -> Full {
    let size = format!("{}MiB", volume_bytes(args) / MIB);
    let created = vol(&hosts[0], &["create", "full", "--size", &size]);
    let id = created[0]["id"].as_str().expect("volume id").to_string();
    let vol_dir = hosts[0].volumes_dir().join(&id);
    let data_bytes = args.data_mib * MIB / FILES * FILES;
    eprintln!("writing {} MiB into volume full ({id})", data_bytes / MIB);
    let start = Instant::now();
    write_data(&vol_dir, data_bytes);
    let write_secs = start.elapsed().as_secs_f64();
    let pids = [daemon_pid(&hosts[0]), daemon_pid(&hosts[1])];
    let dest = pools[1].join("plain-copy.bin");
    let files = data_files(&vol_dir);
    let mut syncs = Vec::new();
    let mut plains = Vec::new();
    for run in 0..args.runs {
        if run > 0 {
            // The next replicate must be full again.
            vol(&hosts[1], &["replica", "rm", &id]);
        }
        settle(pools, args.warm);
        let s = replicate(hosts, &pids, "full", &pools[1]);
        assert!(
            s.parent.is_empty(),
            "run {run}: expected a full stream, got parent {}",
            s.parent
        );
        eprintln!(
            "full run {run}: replicate {:.2} s, {} bytes ({:.0} MB/s), replica syncfs {:.2} s",
            s.secs,
            s.bytes_sent,
            mb_s(s.bytes_sent, s.secs),
            s.syncfs_secs
        );
        syncs.push(s);
        let _ = std::fs::remove_file(&dest);
        settle(pools, args.warm);
        let p = plain_copy(cluster, &files, &dest);
        assert_eq!(p.bytes, data_bytes, "plain copy size");
        eprintln!(
            "full run {run}: plain copy {:.2} s ({:.0} MB/s, fsync {:.2} s)",
            p.secs,
            mb_s(p.bytes, p.secs),
            p.fsync_secs
        );
        plains.push(p);
    }
    let _ = std::fs::remove_file(&dest);
    Full {
        volume_id: id,
        data_bytes,
        write_secs,
        syncs,
        plains,
    }
}

// ---------------------------------------------------------------------------------
// 2. incremental sync
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Incremental {
    changed_bytes: u64,
    syncs: Vec<Sync>,
}

impl Incremental {
    fn to_json(&self, full: &Full) -> Value {
        let secs = median(self.syncs.iter().map(|s| s.secs));
        let bytes = median(self.syncs.iter().map(|s| s.bytes_sent as f64));
        json!({
            "changed_bytes": self.changed_bytes,
            "replicate": self.syncs.iter().map(Sync::to_json).collect::<Vec<_>>(),
            "median_secs": secs,
            "median_bytes_sent": bytes,
            "ratio_bytes_to_full": bytes / full.bytes_sent() as f64,
            "ratio_secs_to_full": secs / full.sync_secs(),
        })
    }
}

fn incremental_sync(
    args: &Args,
    hosts: &[Daemon; 2],
    pools: &[PathBuf; 2],
    full: &Full,
) -> Incremental {
    let vol_dir = hosts[0].volumes_dir().join(&full.volume_id);
    let pids = [daemon_pid(&hosts[0]), daemon_pid(&hosts[1])];
    let want = (full.data_bytes as f64 * args.change_percent / 100.0) as u64;
    let mut changed_bytes = 0;
    let mut syncs = Vec::new();
    for run in 0..args.incr_runs {
        changed_bytes = scatter(&vol_dir, full.data_bytes, want, 100 + u64::from(run));
        settle(pools, args.warm);
        let s = replicate(hosts, &pids, "full", &pools[1]);
        assert!(
            !s.parent.is_empty(),
            "run {run}: expected an incremental stream"
        );
        eprintln!(
            "incremental run {run}: {} bytes changed, replicate {:.2} s, {} bytes sent, replica syncfs {:.2} s",
            changed_bytes, s.secs, s.bytes_sent, s.syncfs_secs
        );
        syncs.push(s);
    }
    // The replica's newest snapshot holds exactly the source's data.
    let replica = vol(&hosts[1], &["replica", "ls"])
        .into_iter()
        .find(|r| r["volume_id"] == full.volume_id.as_str())
        .expect("replica of the full-sync volume on b");
    let latest = PathBuf::from(replica["latest_path"].as_str().expect("latest_path"));
    assert_same(&vol_dir, &latest);
    eprintln!("replica verified: {} equals the source", latest.display());
    Incremental {
        changed_bytes,
        syncs,
    }
}

// ---------------------------------------------------------------------------------
// 3. lag under a steady write load
// ---------------------------------------------------------------------------------

/// One sample of the steady-load part.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the load started.
    t: f64,
    state: String,
    lag_seconds: u64,
    lag_bytes: u64,
    snapshot: String,
    bytes_sent: u64,
    /// The marker in the replica's newest snapshot (0: none yet).
    replica_marker: u64,
}

#[derive(Debug)]
struct Load {
    /// Bytes the writer wrote and the seconds it took.
    written: u64,
    write_secs: f64,
    /// When each marker's fdatasync returned, seconds since the load started.
    marker_written: Vec<f64>,
    /// When each marker was first seen on the replica (None: never).
    marker_seen: Vec<Option<f64>>,
    samples: Vec<Sample>,
    /// Snapshots acknowledged during the load: name, bytes sent.
    rounds: Vec<(String, u64)>,
    /// Seconds from the end of the load until the replica held the last marker.
    drain_secs: Option<f64>,
}

impl Load {
    fn marker_lags(&self) -> Vec<f64> {
        self.marker_written
            .iter()
            .zip(&self.marker_seen)
            .filter_map(|(w, s)| s.map(|s| s - w))
            .collect()
    }

    fn max_lag_seconds(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.lag_seconds)
            .max()
            .unwrap_or(0)
    }

    fn max_lag_bytes(&self) -> u64 {
        self.samples.iter().map(|s| s.lag_bytes).max().unwrap_or(0)
    }

    fn states(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for s in &self.samples {
            match out.iter_mut().find(|(k, _)| *k == s.state) {
                Some((_, n)) => *n += 1,
                None => out.push((s.state.clone(), 1)),
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        let lags = self.marker_lags();
        json!({
            "written_bytes": self.written,
            "write_secs": self.write_secs,
            "achieved_mib_s": self.written as f64 / MIB as f64 / self.write_secs,
            "samples": self.samples.len(),
            "max_lag_seconds": self.max_lag_seconds(),
            "max_lag_bytes": self.max_lag_bytes(),
            "states": self.states().into_iter().map(|(k, n)| (k, json!(n))).collect::<serde_json::Map<_, _>>(),
            "markers_written": self.marker_written.len(),
            "markers_seen": lags.len(),
            "marker_lag_max_secs": lags.iter().copied().fold(0.0, f64::max),
            "marker_lag_median_secs": median(lags.iter().copied()),
            "marker_lags_secs": lags,
            "rounds": self.rounds.iter().map(|(s, b)| json!({"snapshot": s, "bytes_sent": b})).collect::<Vec<_>>(),
            "drain_secs": self.drain_secs,
            "series": self.samples.iter().map(|s| json!({
                "t": s.t,
                "state": s.state,
                "lag_seconds": s.lag_seconds,
                "lag_bytes": s.lag_bytes,
                "snapshot": s.snapshot,
                "replica_marker": s.replica_marker,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The first replica status of volume `name` on `d`.
fn replica_status(d: &Daemon, name: &str) -> Value {
    let v = vol(d, &["inspect", name]).remove(0);
    v["replicas"][0].clone()
}

/// The marker in the newest snapshot `d` holds of volume `id` (0 if none).
fn replica_marker(d: &Daemon, id: &str) -> u64 {
    let Some(r) = vol(d, &["replica", "ls"])
        .into_iter()
        .find(|r| r["volume_id"] == id)
    else {
        return 0;
    };
    let latest = r["latest_path"].as_str().unwrap_or_default();
    if latest.is_empty() {
        return 0;
    }
    std::fs::read_to_string(Path::new(latest).join("marker"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The steady writer: 1 MiB writes at `rate` MiB/s over a region of `load.bin` for
/// `secs`; every second (and at the end) fdatasync, then the next marker, fdatasynced.
/// Pushes each marker's time (since `start`) into `markers`; returns the bytes written.
fn writer(
    dir: &Path,
    rate: u64,
    secs: u64,
    start: Instant,
    markers: &Mutex<Vec<f64>>,
    stop: &AtomicBool,
) -> u64 {
    let load = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("load.bin"))
        .expect("open load file");
    let marker = File::create(dir.join("marker")).expect("create marker");
    let mut rng = Rng::new(7);
    let mut buf = vec![0u8; MIB as usize];
    let mut seq = 0u64;
    let mark = |seq: u64| {
        load.sync_data().expect("fdatasync load");
        marker
            .write_all_at(format!("{seq:020}\n").as_bytes(), 0)
            .expect("write marker");
        marker.sync_data().expect("fdatasync marker");
        markers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(start.elapsed().as_secs_f64());
    };
    let mut next_mark = Duration::from_secs(1);
    let chunks = rate * secs;
    let mut written = 0;
    for k in 0..chunks {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = Duration::from_secs_f64(k as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        rng.fill(&mut buf);
        load.write_all_at(&buf, (k % LOAD_REGION_MIB) * MIB)
            .expect("write load");
        written += MIB;
        if start.elapsed() >= next_mark {
            seq += 1;
            mark(seq);
            next_mark += Duration::from_secs(1);
        }
    }
    seq += 1;
    mark(seq);
    written
}

fn steady_load(args: &Args, hosts: &[Daemon; 2]) -> Load {
    let interval = format!("replicationInterval={}s", args.interval_secs);
    let created = vol(
        &hosts[0],
        &[
            "create",
            "load",
            "--size",
            "1GiB",
            "-o",
            "replicas=2",
            "-o",
            &interval,
        ],
    );
    let id = created[0]["id"].as_str().expect("volume id").to_string();
    let dir = hosts[0].volumes_dir().join(&id);
    // The first (full, nearly empty) copy first: the load measures the steady state.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = replica_status(&hosts[0], "load");
        if r["state"] == "in sync" && !r["snapshot"].as_str().unwrap_or_default().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "load volume never in sync: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "steady load: {} MiB/s for {} s into load ({id}), replicationInterval={}s",
        args.load_mib_s, args.load_secs, args.interval_secs
    );

    let markers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handle = {
        let (markers, stop, dir) = (Arc::clone(&markers), Arc::clone(&stop), dir.clone());
        let (rate, secs) = (args.load_mib_s, args.load_secs);
        std::thread::spawn(move || {
            let n = writer(&dir, rate, secs, start, &markers, &stop);
            (n, start.elapsed().as_secs_f64())
        })
    };
    // Stops the writer if sampling panics.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));

    let period = Duration::from_millis(args.sample_ms);
    let mut samples: Vec<Sample> = Vec::new();
    let mut rounds: Vec<(String, u64)> = Vec::new();
    let mut last_snapshot = replica_status(&hosts[0], "load")["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut finished: Option<(u64, f64, Instant)> = None;
    let mut handle = Some(handle);
    let mut drain_secs = None;
    let mut next = Instant::now();
    loop {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += period;
        let r = replica_status(&hosts[0], "load");
        let replica_marker = replica_marker(&hosts[1], &id);
        let t = start.elapsed().as_secs_f64();
        let sample = Sample {
            t,
            state: r["state"].as_str().unwrap_or_default().to_string(),
            lag_seconds: r["lag_seconds"].as_u64().unwrap_or(0),
            lag_bytes: r["lag_bytes"].as_u64().unwrap_or(0),
            snapshot: r["snapshot"].as_str().unwrap_or_default().to_string(),
            bytes_sent: r["bytes_sent"].as_u64().unwrap_or(0),
            replica_marker,
        };
        if sample.snapshot != last_snapshot && !sample.snapshot.is_empty() {
            last_snapshot = sample.snapshot.clone();
            rounds.push((sample.snapshot.clone(), sample.bytes_sent));
        }
        samples.push(sample);
        if finished.is_none() && handle.as_ref().is_some_and(|h| h.is_finished()) {
            let (n, secs) = handle
                .take()
                .expect("writer")
                .join()
                .expect("writer thread panicked");
            finished = Some((n, secs, Instant::now()));
        }
        if let Some((_, _, at)) = finished {
            let last = markers.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
            if replica_marker >= last {
                drain_secs = Some(at.elapsed().as_secs_f64());
                break;
            }
            if at.elapsed() > DRAIN_LIMIT {
                eprintln!("the replica did not catch up within {DRAIN_LIMIT:?} after the load");
                break;
            }
        }
    }
    let (written, write_secs, _) = finished.expect("writer finished");
    let marker_written = markers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let marker_seen = (1..=marker_written.len() as u64)
        .map(|seq| {
            samples
                .iter()
                .find(|s| s.replica_marker >= seq)
                .map(|s| s.t)
        })
        .collect();
    // The schedule keeps going; nothing more is measured.
    vol(&hosts[0], &["modify", "load", "replicationInterval=1h"]);
    Load {
        written,
        write_secs,
        marker_written,
        marker_seen,
        samples,
        rounds,
        drain_secs,
    }
}

// ---------------------------------------------------------------------------------
// output
// ---------------------------------------------------------------------------------

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// Decimal megabytes per second.
fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn link(args: &Args) -> String {
    match &args.rate {
        Some(r) => format!("a's egress limited to {r} (tc tbf)"),
        None => "no rate limit".into(),
    }
}

fn print_full(args: &Args, full: &Full) {
    println!(
        "replication — 2 hosts (netns on a bridge, veth, {}), dir volume of {} MiB holding {} MiB of \
         incompressible data in {FILES} files; {}",
        link(args),
        volume_bytes(args) / MIB,
        full.data_bytes / MIB,
        if args.warm {
            "page cache kept between steps"
        } else {
            "caches dropped before every timed transfer"
        }
    );
    println!(
        "\n1. full sync, {} run(s) (data written and fsynced in {:.1} s)",
        full.syncs.len(),
        full.write_secs
    );
    println!(
        "{:<36} {:>9} {:>9} {:>14} {:>8}",
        "step", "median s", "max s", "bytes", "MB/s"
    );
    let row = |name: &str, secs: Vec<f64>, bytes: u64| {
        let m = median(secs.iter().copied());
        println!(
            "{name:<36} {m:>9.2} {:>9.2} {bytes:>14} {:>8.1}",
            secs.iter().copied().fold(0.0, f64::max),
            mb_s(bytes, m)
        );
    };
    row(
        "vol replicate (full)",
        full.syncs.iter().map(|s| s.secs).collect(),
        full.bytes_sent(),
    );
    row(
        "  then syncfs of b's pool",
        full.syncs.iter().map(|s| s.syncfs_secs).collect(),
        0,
    );
    row(
        "vol replicate + syncfs",
        full.syncs.iter().map(|s| s.secs + s.syncfs_secs).collect(),
        full.bytes_sent(),
    );
    row(
        "plain TCP copy + fsync",
        full.plains.iter().map(|p| p.secs).collect(),
        full.plains.first().map(|p| p.bytes).unwrap_or(0),
    );
    row(
        "  of which the receiver's fsync",
        full.plains.iter().map(|p| p.fsync_secs).collect(),
        0,
    );
    let plain = full.plain_secs();
    let synced = median(full.syncs.iter().map(|s| s.secs + s.syncfs_secs));
    println!(
        "ratio replicate/plain (time): {:.2}; (replicate + syncfs)/plain: {:.2}",
        full.sync_secs() / plain,
        synced / plain
    );
    let cpu = |i: usize| median(full.syncs.iter().map(|s| s.cpu[i]));
    println!(
        "CPU s per full sync (median): a stowaged {:.2}, btrfs send {:.2}, b stowaged {:.2}, btrfs receive {:.2}; \
         plain copy: sender {:.2}, receiver {:.2}",
        cpu(0),
        cpu(1),
        cpu(2),
        cpu(3),
        median(full.plains.iter().map(|p| p.send_cpu)),
        median(full.plains.iter().map(|p| p.recv_cpu)),
    );
}

fn print_incremental(args: &Args, incr: &Incremental, full: &Full) {
    println!(
        "\n2. incremental sync after {}% changed ({} x 64 KiB overwritten at random offsets, {:.2} MiB, fsynced), {} run(s)",
        args.change_percent,
        incr.changed_bytes / BLOCK,
        incr.changed_bytes as f64 / MIB as f64,
        incr.syncs.len()
    );
    println!(
        "{:<36} {:>9} {:>9} {:>14} {:>8}",
        "step", "median s", "max s", "bytes sent", "MB/s"
    );
    let secs: Vec<f64> = incr.syncs.iter().map(|s| s.secs).collect();
    let m = median(secs.iter().copied());
    let bytes = median(incr.syncs.iter().map(|s| s.bytes_sent as f64)) as u64;
    println!(
        "{:<36} {m:>9.2} {:>9.2} {bytes:>14} {:>8.1}",
        "vol replicate (incremental)",
        secs.iter().copied().fold(0.0, f64::max),
        mb_s(bytes, m)
    );
    let sf: Vec<f64> = incr.syncs.iter().map(|s| s.syncfs_secs).collect();
    println!(
        "{:<36} {:>9.2} {:>9.2}",
        "  then syncfs of b's pool",
        median(sf.iter().copied()),
        sf.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "ratio to full sync: bytes sent {:.4}, time {:.3}; bytes sent / bytes changed {:.3}",
        bytes as f64 / full.bytes_sent() as f64,
        m / full.sync_secs(),
        bytes as f64 / incr.changed_bytes as f64
    );
    let cpu = |i: usize| median(incr.syncs.iter().map(|s| s.cpu[i]));
    println!(
        "CPU s per incremental sync (median): a stowaged {:.2}, btrfs send {:.2}, b stowaged {:.2}, btrfs receive {:.2}",
        cpu(0),
        cpu(1),
        cpu(2),
        cpu(3)
    );
}

fn print_load(args: &Args, load: &Load) {
    let lags = load.marker_lags();
    println!(
        "\n3. lag under a steady write load: {} MiB/s of 1 MiB overwrites for {} s (achieved {:.2} MiB/s), \
         replicas=2, replicationInterval={}s, sampled every {} ms ({} samples)",
        args.load_mib_s,
        args.load_secs,
        load.written as f64 / MIB as f64 / load.write_secs,
        args.interval_secs,
        args.sample_ms,
        load.samples.len()
    );
    println!(
        "largest lag_seconds (vol inspect, whole seconds since the acknowledged snapshot was taken): {}",
        load.max_lag_seconds()
    );
    println!(
        "largest lag_bytes (vol inspect, stream bytes of a send in flight): {} ({:.1} MiB)",
        load.max_lag_bytes(),
        load.max_lag_bytes() as f64 / MIB as f64
    );
    println!(
        "written (fdatasync returned) → on the replica's newest snapshot, per 1 s marker: \
         max {:.2} s, median {:.2} s ({} of {} markers seen; resolution {} ms)",
        lags.iter().copied().fold(0.0, f64::max),
        median(lags.iter().copied()),
        lags.len(),
        load.marker_written.len(),
        args.sample_ms
    );
    let sent: Vec<f64> = load.rounds.iter().map(|(_, b)| *b as f64).collect();
    println!(
        "rounds acknowledged during the run: {}, stream bytes per round median {:.1} MiB, max {:.1} MiB",
        load.rounds.len(),
        median(sent.iter().copied()) / MIB as f64,
        sent.iter().copied().fold(0.0, f64::max) / MIB as f64
    );
    let states: Vec<String> = load
        .states()
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("states sampled: {}", states.join(", "));
    match load.drain_secs {
        Some(d) => println!("after the load the replica held the last marker {d:.2} s later"),
        None => println!("the replica did NOT catch up within {DRAIN_LIMIT:?} after the load"),
    }
}
