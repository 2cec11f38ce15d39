//! Full and incremental replication runs.

use super::*;

/// One `vol replicate`.
#[derive(Debug, Clone)]
pub(crate) struct Sync {
    /// The command, from start to the peer's acknowledgement.
    pub(crate) secs: f64,
    pub(crate) bytes_sent: u64,
    pub(crate) snapshot: String,
    pub(crate) parent: String,
    /// syncfs of the replica's pool right after.
    pub(crate) syncfs_secs: f64,
    /// CPU seconds: a's stowaged, its children (btrfs send), b's, its children
    /// (btrfs receive).
    pub(crate) cpu: [f64; 4],
}

impl Sync {
    pub(crate) fn to_json(&self) -> Value {
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
pub(crate) struct Full {
    pub(crate) volume_id: String,
    pub(crate) data_bytes: u64,
    pub(crate) write_secs: f64,
    pub(crate) syncs: Vec<Sync>,
    pub(crate) plains: Vec<Plain>,
}

impl Full {
    pub(crate) fn sync_secs(&self) -> f64 {
        median(self.syncs.iter().map(|s| s.secs))
    }

    pub(crate) fn plain_secs(&self) -> f64 {
        median(self.plains.iter().map(|p| p.secs))
    }

    pub(crate) fn bytes_sent(&self) -> u64 {
        median(self.syncs.iter().map(|s| s.bytes_sent as f64)) as u64
    }

    pub(crate) fn to_json(&self) -> Value {
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
pub(crate) fn replicate(
    hosts: &[Daemon; 2],
    pids: &[String; 2],
    name: &str,
    pool_b: &Path,
) -> Sync {
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

pub(crate) fn full_sync(
    args: &Args,
    cluster: &Cluster,
    hosts: &[Daemon; 2],
    pools: &[PathBuf; 2],
) -> Full {
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
pub(crate) struct Incremental {
    pub(crate) changed_bytes: u64,
    pub(crate) syncs: Vec<Sync>,
}

impl Incremental {
    pub(crate) fn to_json(&self, full: &Full) -> Value {
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

pub(crate) fn incremental_sync(
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
