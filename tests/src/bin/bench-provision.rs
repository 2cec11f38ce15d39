//! Provisioning benchmark: how long each CSI step takes on a real `stowaged`.
//!
//! For each back end (dir 64 MiB, loop+ext4 256 MiB, loop+xfs 512 MiB) it runs `--count`
//! volumes through CreateVolume → NodeStageVolume → NodePublishVolume →
//! NodeUnpublishVolume → NodeUnstageVolume → DeleteVolume, once sequentially and once
//! with `--concurrency` volumes in flight (each volume's own steps in order), and prints
//! p50/p95/max per step, the wall time and volumes/s (`--json` for machine-readable
//! output). Every step must succeed and ListVolumes must be empty after each run.
//!
//! Needs root (loop devices, mounts). Run it on demand, never as part of the tests:
//!
//! ```text
//! sudo hack/bench/provision [--count 20] [--concurrency 8] [--json]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use stowage_tests::{Clients, Daemon};

/// Times each CSI provisioning step of a real stowaged, per back end.
#[derive(Debug, Parser)]
struct Args {
    /// Volumes per back end and mode.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Volumes in flight in the concurrent mode.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

const STEPS: [&str; 6] = [
    "CreateVolume",
    "NodeStageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeUnstageVolume",
    "DeleteVolume",
];

/// One back end: its StorageClass parameters and volume size.
#[derive(Debug)]
struct Backend {
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
    bytes: i64,
}

const BACKENDS: [Backend; 3] = [
    Backend {
        name: "dir",
        params: &[("kind", "dir")],
        bytes: 64 << 20,
    },
    Backend {
        name: "loop-ext4",
        params: &[("kind", "loop"), ("fsType", "ext4")],
        bytes: 256 << 20,
    },
    Backend {
        name: "loop-xfs",
        params: &[("kind", "loop"), ("fsType", "xfs")],
        bytes: 512 << 20,
    },
];

/// The durations of one volume's steps, in `STEPS` order.
type Timings = [Duration; STEPS.len()];

/// The result of one back end in one mode.
#[derive(Debug)]
struct Run {
    backend: &'static str,
    concurrency: u32,
    wall: Duration,
    volumes: Vec<Timings>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let daemon = Daemon::start("32GiB", &[]);
    let clients = daemon.clients().await;
    let mut runs = Vec::new();
    for backend in &BACKENDS {
        for concurrency in [1, args.concurrency] {
            let run = run(&clients, daemon.root(), backend, args.count, concurrency).await;
            let left = clients.clone().list_ids().await;
            assert!(
                left.is_empty(),
                "ListVolumes not empty after a run: {left:?}"
            );
            if !args.json {
                print_table(&run);
            }
            runs.push(run);
        }
    }
    if args.json {
        let out: Vec<_> = runs.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    }
}

/// Runs `count` volumes of `backend` through all steps, `concurrency` at a time.
async fn run(c: &Clients, root: &Path, b: &'static Backend, count: u32, concurrency: u32) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(count))
        .map(|_| {
            let (c, root, next) = (c.clone(), root.to_path_buf(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count as usize {
                        return done;
                    }
                    let name = format!("bench-{}-c{concurrency}-{i}", b.name);
                    done.push(volume(c.clone(), &root, b, &name).await);
                }
            })
        })
        .collect();
    let mut volumes = Vec::new();
    for w in workers {
        volumes.extend(w.await.expect("a volume failed (see the panic above)"));
    }
    Run {
        backend: b.name,
        concurrency,
        wall: start.elapsed(),
        volumes,
    }
}

/// Takes one volume through all steps and returns how long each took.
async fn volume(mut c: Clients, root: &Path, b: &Backend, name: &str) -> Timings {
    let staging = root.join("staging").join(name);
    let target = root.join("pods").join(name).join("target");
    let start = Instant::now();
    let id = c.create(name, b.bytes, b.params).await;
    let created = start.elapsed();
    [
        created,
        timed(1, &id, c.stage(&id, &staging)).await,
        timed(2, &id, c.publish(&id, &staging, &target, false)).await,
        timed(3, &id, c.unpublish(&id, &target)).await,
        timed(4, &id, c.unstage(&id, &staging)).await,
        timed(5, &id, c.delete(&id)).await,
    ]
}

/// Awaits step `step` of volume `id`, panicking with the gRPC status if it failed.
async fn timed(
    step: usize,
    id: &str,
    rpc: impl Future<Output = Result<(), tonic::Status>>,
) -> Duration {
    let start = Instant::now();
    if let Err(status) = rpc.await {
        panic!("{} of {id} failed: {status:?}", STEPS[step]);
    }
    start.elapsed()
}

/// Nearest-rank percentile `p` (0–100) of `sorted`, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Sorted durations of step `step` over all volumes of `run`.
fn step_durations(run: &Run, step: usize) -> Vec<Duration> {
    let mut d: Vec<_> = run.volumes.iter().map(|t| t[step]).collect();
    d.sort();
    d
}

fn volumes_per_s(run: &Run) -> f64 {
    run.volumes.len() as f64 / run.wall.as_secs_f64()
}

fn print_table(run: &Run) {
    println!(
        "\n{} — concurrency {}: {} volumes in {:.2} s, {:.2} volumes/s",
        run.backend,
        run.concurrency,
        run.volumes.len(),
        run.wall.as_secs_f64(),
        volumes_per_s(run)
    );
    println!(
        "{:<20} {:>4} {:>9} {:>9} {:>9}",
        "step", "n", "p50 ms", "p95 ms", "max ms"
    );
    for (i, step) in STEPS.iter().enumerate() {
        let d = step_durations(run, i);
        println!(
            "{step:<20} {:>4} {:>9.1} {:>9.1} {:>9.1}",
            d.len(),
            percentile_ms(&d, 50),
            percentile_ms(&d, 95),
            percentile_ms(&d, 100)
        );
    }
}

fn to_json(run: &Run) -> serde_json::Value {
    let steps: Vec<_> = STEPS
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let d = step_durations(run, i);
            json!({
                "step": step,
                "n": d.len(),
                "p50_ms": percentile_ms(&d, 50),
                "p95_ms": percentile_ms(&d, 95),
                "max_ms": percentile_ms(&d, 100),
            })
        })
        .collect();
    json!({
        "backend": run.backend,
        "concurrency": run.concurrency,
        "volumes": run.volumes.len(),
        "wall_s": run.wall.as_secs_f64(),
        "volumes_per_s": volumes_per_s(run),
        "steps": steps,
    })
}
