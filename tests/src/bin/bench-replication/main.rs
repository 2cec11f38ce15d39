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

mod data;
mod hosts;
mod load;
mod plain;
mod report;
mod syncs;

use data::*;
use hosts::*;
use load::*;
use plain::*;
use report::*;
use syncs::*;
