//! Medians, rates, and the tables (or JSON) printed.

use super::*;

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// Decimal megabytes per second.
pub(crate) fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub(crate) fn link(args: &Args) -> String {
    match &args.rate {
        Some(r) => format!("a's egress limited to {r} (tc tbf)"),
        None => "no rate limit".into(),
    }
}

pub(crate) fn print_full(args: &Args, full: &Full) {
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

pub(crate) fn print_incremental(args: &Args, incr: &Incremental, full: &Full) {
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

pub(crate) fn print_load(args: &Args, load: &Load) {
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
