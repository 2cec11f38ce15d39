//! Snapshot benchmark: how long a snapshot and a restore of a 1 GiB volume with 10% of
//! it written take on a real `stowaged`, against a naive full copy of the same data.
//!
//! For each back end (dir, loop+ext4, loop+xfs) it creates a 1 GiB volume, stages and
//! publishes it, and writes 10% of it (pseudo-random data in 4 MiB chunks scattered
//! over 8 sparse files) with fsync. Then, `--runs` times, with a fresh snapshot and
//! restore each run, it times CreateSnapshot of the staged volume, CreateVolume from
//! that snapshot, the first ControllerPublish + NodeStage of the restored volume and
//! reading its data back (whose checksum must equal the source's), and measures the
//! pool space one snapshot takes (statvfs of the pool before and after, and the btrfs
//! qgroup exclusive bytes of the snapshot). With the volume unstaged, it then times the
//! peer a snapshot replaces: `cp --reflink=never --sparse=always` of the volume's
//! directory (dir) or image file (loop) to a directory on the same pool, followed by
//! syncfs, since a snapshot is durable when CreateSnapshot returns. It prints the median
//! and max of each step and a summary with the snapshot/full-copy ratio (`--json` for
//! machine-readable output). Everything is deleted again; ListVolumes and ListSnapshots
//! must be empty at the end.
//!
//! Needs root (loop devices, mounts). Run it on demand, never as part of the tests:
//!
//! ```text
//! sudo hack/bench/snapshot [--runs 5] [--json]
//! ```

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use stowage_proto::csi::v1 as csi;
use stowage_tests::{Clients, Daemon, create_req, mounts_under};

/// Times snapshot and restore of a 1 GiB volume with 10% written, per back end.
#[derive(Debug, Parser)]
struct Args {
    /// Snapshot/restore cycles (and full copies) per back end.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Size of every volume.
const VOLUME_BYTES: u64 = 1 << 30;
/// Data written into the source volume: 10% of it.
const WRITE_BYTES: u64 = VOLUME_BYTES / 10;
/// Size of one write (the last one is shorter).
const CHUNK: u64 = 4 << 20;
/// Files the chunks are spread over, round-robin.
const FILES: u64 = 8;
/// Distance between consecutive chunks of one file: each chunk is followed by a hole.
const STRIDE: u64 = 2 * CHUNK;
/// Directory inside the volume that holds the data files.
const DATA_DIR: &str = "bench-data";

const STEPS: [&str; 6] = [
    "CreateSnapshot",
    "CreateVolume from snapshot",
    "first stage of restored",
    "read back restored",
    "full copy: cp",
    "full copy: cp + syncfs",
];
const SNAPSHOT: usize = 0;
const RESTORE: usize = 1;
const FIRST_STAGE: usize = 2;
const READ_BACK: usize = 3;
const COPY: usize = 4;
const COPY_SYNCED: usize = 5;

/// One back end: its StorageClass parameters.
#[derive(Debug)]
struct Backend {
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
    /// A directory volume (else a loop volume with an image file).
    dir: bool,
}

const BACKENDS: [Backend; 3] = [
    Backend {
        name: "dir",
        params: &[("kind", "dir")],
        dir: true,
    },
    Backend {
        name: "loop-ext4",
        params: &[("kind", "loop"), ("fsType", "ext4")],
        dir: false,
    },
    Backend {
        name: "loop-xfs",
        params: &[("kind", "loop"), ("fsType", "xfs")],
        dir: false,
    },
];

/// Everything measured for one back end.
#[derive(Debug)]
struct Run {
    backend: &'static str,
    /// Per step, one duration per run.
    steps: [Vec<Duration>; STEPS.len()],
    /// Pool bytes one snapshot took (statvfs before minus after), per run.
    snapshot_space: Vec<i64>,
    /// The snapshot's btrfs qgroup exclusive bytes, per run.
    snapshot_exclusive: Vec<i64>,
    /// Pool bytes one full copy took, per run.
    copy_space: Vec<i64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let daemon = Daemon::start("8GiB", &[]);
    let mut clients = daemon.clients().await;
    let mut runs = Vec::new();
    for backend in &BACKENDS {
        let run = run(&mut clients, &daemon, backend, args.runs).await;
        let left = clients.list_ids().await;
        assert!(
            left.is_empty(),
            "ListVolumes not empty after a run: {left:?}"
        );
        let snaps = list_snapshot_ids(&mut clients).await;
        assert!(
            snaps.is_empty(),
            "ListSnapshots not empty after a run: {snaps:?}"
        );
        let loops = daemon.volume_loops();
        assert!(loops.is_empty(), "loop devices left after a run: {loops:?}");
        for dir in ["staging", "pods"] {
            let mounts = mounts_under(&daemon.root().join(dir));
            assert!(mounts.is_empty(), "mounts left after a run: {mounts:?}");
        }
        if !args.json {
            print_steps(&run, args.runs);
        }
        runs.push(run);
    }
    if args.json {
        let out: Vec<_> = runs.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        print_summary(&runs);
    }
}

/// Runs all measurements of back end `b`, leaving no volume or snapshot behind.
async fn run(c: &mut Clients, daemon: &Daemon, b: &'static Backend, runs: u32) -> Run {
    let root = daemon.root();
    let pool = daemon.state_dir().join("pool");
    let mut out = Run {
        backend: b.name,
        steps: Default::default(),
        snapshot_space: Vec::new(),
        snapshot_exclusive: Vec::new(),
        copy_space: Vec::new(),
    };

    let name = format!("bench-{}-source", b.name);
    let staging = root.join("staging").join(&name);
    let target = root.join("pods").join(&name).join("target");
    let id = c.create(&name, VOLUME_BYTES as i64, b.params).await;
    ok(&format!("stage {id}"), c.stage(&id, &staging).await);
    ok(
        &format!("publish {id}"),
        c.publish(&id, &staging, &target, false).await,
    );
    let data = target.join(DATA_DIR);
    let expected = blocking(move || {
        write_data(&data);
        checksum(&data)
    })
    .await;

    for i in 0..runs {
        // Snapshot the staged volume (a loop volume's filesystem is frozen meanwhile).
        let before = settled_available(&pool);
        let start = Instant::now();
        let snap = ok(
            "CreateSnapshot",
            create_snapshot(c, &format!("bench-{}-snap-{i}", b.name), &id).await,
        );
        out.steps[SNAPSHOT].push(start.elapsed());
        out.snapshot_space
            .push(before as i64 - settled_available(&pool) as i64);
        out.snapshot_exclusive
            .push(qgroup_exclusive(&pool.join("snapshots").join(&snap)));

        // Restore it into a new volume, stage that and check its data.
        let rname = format!("bench-{}-restore-{i}", b.name);
        let rstaging = root.join("staging").join(&rname);
        let start = Instant::now();
        let restored = ok(
            "CreateVolume from snapshot",
            restore(c, &rname, b.params, &snap).await,
        );
        out.steps[RESTORE].push(start.elapsed());
        let start = Instant::now();
        ok(
            &format!("stage restored {restored}"),
            c.stage(&restored, &rstaging).await,
        );
        out.steps[FIRST_STAGE].push(start.elapsed());
        let rdata = rstaging.join(DATA_DIR);
        let start = Instant::now();
        let got = blocking(move || checksum(&rdata)).await;
        out.steps[READ_BACK].push(start.elapsed());
        assert_eq!(
            got, expected,
            "{}: the data of volume {restored} restored from {snap} differs from its source",
            b.name
        );

        ok(
            &format!("unstage {restored}"),
            c.unstage(&restored, &rstaging).await,
        );
        ok(&format!("delete {restored}"), c.delete(&restored).await);
        ok(
            &format!("delete snapshot {snap}"),
            delete_snapshot(c, &snap).await,
        );
    }

    // The naive peer: a full copy of the unstaged volume's data to the same pool.
    ok(&format!("unpublish {id}"), c.unpublish(&id, &target).await);
    ok(&format!("unstage {id}"), c.unstage(&id, &staging).await);
    let source = daemon.volume_dir(&id);
    for _ in 0..runs {
        let dest = tempfile::Builder::new()
            .prefix("bench-copy-")
            .tempdir_in(&pool)
            .expect("temp dir on the pool");
        let before = settled_available(&pool);
        let (src, to, pool2) = (source.clone(), dest.path().to_path_buf(), pool.clone());
        let dir = b.dir;
        let (copied, synced) = blocking(move || {
            let start = Instant::now();
            full_copy(&src, &to, dir);
            let copied = start.elapsed();
            syncfs(&pool2);
            (copied, start.elapsed())
        })
        .await;
        out.steps[COPY].push(copied);
        out.steps[COPY_SYNCED].push(synced);
        out.copy_space
            .push(before as i64 - settled_available(&pool) as i64);
        dest.close().expect("remove the copy");
    }
    ok(&format!("delete {id}"), c.delete(&id).await);
    out
}

/// Unwraps the result of RPC `what`, panicking with the gRPC status.
fn ok<T>(what: &str, r: Result<T, tonic::Status>) -> T {
    r.unwrap_or_else(|status| panic!("{what} failed: {status:?}"))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

async fn create_snapshot(
    c: &mut Clients,
    name: &str,
    source: &str,
) -> Result<String, tonic::Status> {
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: source.to_string(),
            name: name.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(snap.ready_to_use, "snapshot {} not ready", snap.snapshot_id);
    Ok(snap.snapshot_id)
}

async fn delete_snapshot(c: &mut Clients, id: &str) -> Result<(), tonic::Status> {
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id.to_string(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn list_snapshot_ids(c: &mut Clients) -> Vec<String> {
    c.controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .expect("ListSnapshots")
        .into_inner()
        .entries
        .into_iter()
        .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
        .collect()
}

/// CreateVolume of a 1 GiB volume from snapshot `snap`; returns the volume id.
async fn restore(
    c: &mut Clients,
    name: &str,
    params: &[(&str, &str)],
    snap: &str,
) -> Result<String, tonic::Status> {
    let mut req = create_req(name, VOLUME_BYTES as i64, params);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.to_string(),
            },
        )),
    });
    Ok(c.controller
        .create_volume(req)
        .await?
        .into_inner()
        .volume
        .expect("volume")
        .volume_id)
}

/// splitmix64: a fast generator whose output is not all zeros (nor compressible).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `WRITE_BYTES` of pseudo-random data under `dir`: `CHUNK`-sized writes
/// round-robin over `FILES` files, each chunk followed by a hole; fsyncs it all.
fn write_data(dir: &Path) {
    std::fs::create_dir(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let files: Vec<File> = (0..FILES)
        .map(|f| {
            let p = dir.join(format!("data-{f}"));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
        })
        .collect();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut state = 0x5354_4F57_4147_4531; // "STOWAGE1"
    let mut written = 0;
    let mut chunk = 0;
    while written < WRITE_BYTES {
        let len = CHUNK.min(WRITE_BYTES - written) as usize;
        for word in buf[..len].chunks_mut(8) {
            let w = splitmix64(&mut state).to_le_bytes();
            word.copy_from_slice(&w[..word.len()]);
        }
        let file = &files[(chunk % FILES) as usize];
        file.write_all_at(&buf[..len], (chunk / FILES) * STRIDE)
            .expect("write data");
        written += len as u64;
        chunk += 1;
    }
    for f in &files {
        f.sync_all().expect("fsync data");
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync data dir");
}

/// A checksum of the names, lengths and contents (holes read as zeros) of the
/// regular files in `dir`.
fn checksum(dir: &Path) -> u64 {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut mix = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(0x0000_0100_0000_01B3);
    let mut buf = vec![0u8; CHUNK as usize];
    for p in names {
        let mut f = File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        for b in p.file_name().expect("file name").as_encoded_bytes() {
            mix(u64::from(*b));
        }
        let mut len = 0u64;
        loop {
            // Whole buffers until the end, so the words do not depend on read sizes.
            let n = read_full(&mut f, &mut buf);
            if n == 0 {
                break;
            }
            len += n as u64;
            for word in buf[..n].chunks(8) {
                let mut w = [0u8; 8];
                w[..word.len()].copy_from_slice(word);
                mix(u64::from_le_bytes(w));
            }
        }
        mix(len);
    }
    h
}

/// Fills `buf` from `f` unless the file ends first; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read data") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Copies volume directory `src` (dir) or its image file (loop) into `dest`, never
/// sharing extents.
fn full_copy(src: &Path, dest: &Path, dir: bool) {
    let mut cmd = Command::new("cp");
    cmd.args(["--reflink=never", "--sparse=always"]);
    if dir {
        cmd.arg("-a").arg(src).arg(dest.join("copy"));
    } else {
        cmd.arg(src.join("disk.img")).arg(dest.join("disk.img"));
    }
    let status = cmd.status().expect("run cp");
    assert!(status.success(), "{cmd:?}: {status}");
}

fn syncfs(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::unistd::syncfs(&f).unwrap_or_else(|e| panic!("syncfs {}: {e}", path.display()));
}

/// Available bytes of the pool once written data is on disk and deleted subvolumes
/// are cleaned up (btrfs frees their space in the background).
fn settled_available(pool: &Path) -> u64 {
    syncfs(pool);
    let status = Command::new("btrfs")
        .args(["subvolume", "sync"])
        .arg(pool)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run btrfs subvolume sync");
    assert!(status.success(), "btrfs subvolume sync: {status}");
    syncfs(pool);
    let st = nix::sys::statvfs::statvfs(pool).expect("statvfs pool");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// The btrfs qgroup exclusive bytes of subvolume `path`: what deleting it would free.
fn qgroup_exclusive(path: &Path) -> i64 {
    // Text, not `--format json`: btrfs-progs 6.2 aborts on `qgroup show --raw` in JSON.
    let out = Command::new("btrfs")
        .args(["qgroup", "show", "--raw", "--sync", "-f"])
        .arg(path)
        .output()
        .expect("run btrfs qgroup show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "btrfs qgroup show {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Qgroupid  Referenced  Exclusive  Path: the line of the snapshot's level-0 qgroup.
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| {
            w.first()
                .is_some_and(|id| id.starts_with("0/") && *id != "0/5")
        })
        .and_then(|w| w.get(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no exclusive bytes in `btrfs qgroup show` output:\n{text}"))
}

fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v[(v.len() - 1) / 2]
}

fn max(values: &[Duration]) -> Duration {
    values.iter().copied().max().unwrap_or_default()
}

fn median_i64(values: &[i64]) -> i64 {
    let mut v = values.to_vec();
    v.sort();
    v[(v.len() - 1) / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Snapshot median over full copy (with syncfs) median.
fn ratio(run: &Run) -> f64 {
    ms(median(&run.steps[SNAPSHOT])) / ms(median(&run.steps[COPY_SYNCED]))
}

fn print_steps(run: &Run, runs: u32) {
    println!(
        "\n{} — 1 GiB volume, {:.1} MiB written, {runs} runs",
        run.backend,
        mib(WRITE_BYTES as i64)
    );
    println!(
        "{:<28} {:>4} {:>10} {:>9}",
        "step", "n", "median ms", "max ms"
    );
    for (step, d) in STEPS.iter().zip(&run.steps) {
        println!(
            "{step:<28} {:>4} {:>10.1} {:>9.1}",
            d.len(),
            ms(median(d)),
            ms(max(d))
        );
    }
    println!(
        "pool space per snapshot: {:.2} MiB (statvfs), {} KiB exclusive (qgroup); per full copy: {:.1} MiB",
        mib(median_i64(&run.snapshot_space)),
        median_i64(&run.snapshot_exclusive) / 1024,
        mib(median_i64(&run.copy_space))
    );
}

fn print_summary(runs: &[Run]) {
    println!("\nsummary (medians; full copy = cp --reflink=never --sparse=always, then syncfs)");
    println!(
        "{:<10} {:>12} {:>11} {:>13} {:>14} {:>13} {:>9}",
        "back end",
        "snapshot ms",
        "restore ms",
        "full copy ms",
        "snapshot/copy",
        "snapshot MiB",
        "copy MiB"
    );
    for r in runs {
        println!(
            "{:<10} {:>12.1} {:>11.1} {:>13.1} {:>14.3} {:>13.2} {:>9.1}",
            r.backend,
            ms(median(&r.steps[SNAPSHOT])),
            ms(median(&r.steps[RESTORE])),
            ms(median(&r.steps[COPY_SYNCED])),
            ratio(r),
            mib(median_i64(&r.snapshot_space)),
            mib(median_i64(&r.copy_space))
        );
    }
}

fn to_json(run: &Run) -> serde_json::Value {
    let steps: Vec<_> = STEPS
        .iter()
        .zip(&run.steps)
        .map(|(step, d)| {
            json!({
                "step": step,
                "n": d.len(),
                "median_ms": ms(median(d)),
                "max_ms": ms(max(d)),
                "ms": d.iter().map(|&x| ms(x)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "backend": run.backend,
        "volume_bytes": VOLUME_BYTES,
        "written_bytes": WRITE_BYTES,
        "steps": steps,
        "snapshot_to_full_copy": ratio(run),
        "snapshot_space_bytes": run.snapshot_space,
        "snapshot_exclusive_bytes": run.snapshot_exclusive,
        "full_copy_space_bytes": run.copy_space,
    })
}
