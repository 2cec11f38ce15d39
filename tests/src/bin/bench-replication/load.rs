//! Replication lag under a steady write load.

use super::*;

/// One sample of the steady-load part.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Seconds since the load started.
    pub(crate) t: f64,
    pub(crate) state: String,
    pub(crate) lag_seconds: u64,
    pub(crate) lag_bytes: u64,
    pub(crate) snapshot: String,
    pub(crate) bytes_sent: u64,
    /// The marker in the replica's newest snapshot (0: none yet).
    pub(crate) replica_marker: u64,
}

#[derive(Debug)]
pub(crate) struct Load {
    /// Bytes the writer wrote and the seconds it took.
    pub(crate) written: u64,
    pub(crate) write_secs: f64,
    /// When each marker's fdatasync returned, seconds since the load started.
    pub(crate) marker_written: Vec<f64>,
    /// When each marker was first seen on the replica (None: never).
    pub(crate) marker_seen: Vec<Option<f64>>,
    pub(crate) samples: Vec<Sample>,
    /// Snapshots acknowledged during the load: name, bytes sent.
    pub(crate) rounds: Vec<(String, u64)>,
    /// Seconds from the end of the load until the replica held the last marker.
    pub(crate) drain_secs: Option<f64>,
}

impl Load {
    pub(crate) fn marker_lags(&self) -> Vec<f64> {
        self.marker_written
            .iter()
            .zip(&self.marker_seen)
            .filter_map(|(w, s)| s.map(|s| s - w))
            .collect()
    }

    pub(crate) fn max_lag_seconds(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| s.lag_seconds)
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn max_lag_bytes(&self) -> u64 {
        self.samples.iter().map(|s| s.lag_bytes).max().unwrap_or(0)
    }

    pub(crate) fn states(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for s in &self.samples {
            match out.iter_mut().find(|(k, _)| *k == s.state) {
                Some((_, n)) => *n += 1,
                None => out.push((s.state.clone(), 1)),
            }
        }
        out
    }

    pub(crate) fn to_json(&self) -> Value {
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
pub(crate) fn replica_status(d: &Daemon, name: &str) -> Value {
    let v = vol(d, &["inspect", name]).remove(0);
    v["replicas"][0].clone()
}

/// The marker in the newest snapshot `d` holds of volume `id` (0 if none).
pub(crate) fn replica_marker(d: &Daemon, id: &str) -> u64 {
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
pub(crate) fn writer(
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

pub(crate) fn steady_load(args: &Args, hosts: &[Daemon; 2]) -> Load {
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
