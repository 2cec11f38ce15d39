//! Fault soak: a real `stowaged` is killed with SIGKILL (`--kills` times, default 20)
//! while volumes of each kind go through their lifecycle (`--lifecycles` per kind,
//! default 300: create → stage → publish → write + fsync → unpublish → unstage →
//! delete, every tenth volume kept published), each step retried until the restarted
//! daemon answers. At the end the daemon is killed once more and restarted, and:
//!
//! - every volume whose CreateVolume was answered and whose DeleteVolume was not
//!   exists (ListVolumes), and nothing else of the soak's;
//! - every kept volume still reads back what was written and fsynced, through its
//!   mount and again from the disk (unmounted, caches dropped, mounted anew);
//! - after cleaning up, no volume or snapshot directory, no mount under the test
//!   directory and no loop device on the pool is left.
//!
//! Needs root. On demand, never part of the tests: `sudo hack/soak.sh [ARGS]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use stowage_proto::csi::v1 as csi;
use stowage_tests::{Clients, Daemon, loops_under, mounts_under, pattern};

/// SIGKILLs a real stowaged during volume lifecycles and checks what survives.
#[derive(Debug, Parser)]
struct Args {
    /// Lifecycles per volume kind (dir, loop ext4, loop xfs).
    #[arg(long, default_value_t = 300)]
    lifecycles: u32,
    /// SIGKILLs of the daemon, spread over the run.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Seconds between kills.
    #[arg(long, default_value_t = 4)]
    interval: u64,
}

#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    params: &'static [(&'static str, &'static str)],
    bytes: i64,
}

const KINDS: [Kind; 3] = [
    Kind {
        name: "dir",
        params: &[("kind", "dir")],
        bytes: 32 << 20,
    },
    Kind {
        name: "ext4",
        params: &[("kind", "loop"), ("fsType", "ext4")],
        bytes: 64 << 20,
    },
    Kind {
        name: "xfs",
        params: &[("kind", "loop"), ("fsType", "xfs")],
        bytes: 320 << 20,
    },
];

/// What the daemon acknowledged of one volume.
#[derive(Debug, Default, Clone)]
struct Acked {
    id: String,
    deleted: bool,
    /// Kept published at (staging, target) with these fsynced bytes in `data`.
    kept: Option<(PathBuf, PathBuf, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Figures {
    retries: u64,
}

struct Soak {
    socket: PathBuf,
    root: PathBuf,
    acked: Mutex<BTreeMap<String, Acked>>,
    figures: Mutex<Figures>,
}

impl Soak {
    async fn clients(&self) -> Clients {
        loop {
            if let Ok(ch) = stowage_cli::client::connect(&self.socket).await {
                return Clients {
                    identity: csi::identity_client::IdentityClient::new(ch.clone()),
                    controller: csi::controller_client::ControllerClient::new(ch.clone()),
                    node: csi::node_client::NodeClient::new(ch),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `step` until the daemon answers it with success (a killed daemon drops the
    /// call; a restarted one finishes it, every step being idempotent).
    async fn retry<T, F, Fut>(&self, what: &str, mut step: F) -> T
    where
        F: FnMut(Clients) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tries = 0;
        loop {
            let c = self.clients().await;
            match step(c).await {
                Ok(v) => return v,
                Err(e) => {
                    tries += 1;
                    self.figures.lock().unwrap().retries += 1;
                    assert!(
                        Instant::now() < deadline,
                        "{what} never succeeded; last: {e:?}"
                    );
                    if tries > 3
                        && !matches!(
                            e.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Aborted
                                | tonic::Code::Cancelled
                        )
                    {
                        eprintln!("{what}: {e:?} (retrying)");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn lifecycle(&self, kind: Kind, n: u32) {
        let name = format!("soak-{}-{n}", kind.name);
        let staging = self.root.join(format!("s/{name}"));
        let target = self.root.join(format!("t/{name}/mnt"));
        let req = stowage_tests::create_req(&name, kind.bytes, kind.params);
        let id = self
            .retry("CreateVolume", |mut c| {
                let req = req.clone();
                async move {
                    Ok(c.controller
                        .create_volume(req)
                        .await?
                        .into_inner()
                        .volume
                        .expect("volume")
                        .volume_id)
                }
            })
            .await;
        self.acked.lock().unwrap().insert(
            name.clone(),
            Acked {
                id: id.clone(),
                ..Default::default()
            },
        );
        self.mount(&id, &staging, &target).await;
        // The workload: written and fsynced through the published mount.
        let data = pattern(256 << 10, u64::from(n) ^ kind.bytes as u64);
        stowage_tests::write_synced(&target.join("data"), &data);
        if n.is_multiple_of(10) {
            if let Some(a) = self.acked.lock().unwrap().get_mut(&name) {
                a.kept = Some((staging, target, data));
            }
            return;
        }
        self.retire(&name, &id, &staging, &target).await;
    }

    /// Stages `id` at `staging` and publishes it at `target`.
    async fn mount(&self, id: &str, staging: &Path, target: &Path) {
        self.retry("NodeStageVolume", |mut c| {
            let (id, staging) = (id.to_string(), staging.to_path_buf());
            async move { c.stage(&id, &staging).await }
        })
        .await;
        self.retry("NodePublishVolume", |mut c| {
            let (id, staging, target) =
                (id.to_string(), staging.to_path_buf(), target.to_path_buf());
            async move { c.publish(&id, &staging, &target, false).await }
        })
        .await;
    }

    /// Unpublishes `id` from `target` and unstages it from `staging`.
    async fn retire_mounts(&self, id: &str, staging: &Path, target: &Path) {
        self.retry("NodeUnpublishVolume", |mut c| {
            let (id, target) = (id.to_string(), target.to_path_buf());
            async move { c.unpublish(&id, &target).await }
        })
        .await;
        self.retry("NodeUnstageVolume", |mut c| {
            let (id, staging) = (id.to_string(), staging.to_path_buf());
            async move { c.unstage(&id, &staging).await }
        })
        .await;
    }

    async fn retire(&self, name: &str, id: &str, staging: &Path, target: &Path) {
        self.retire_mounts(id, staging, target).await;
        self.retry("DeleteVolume", |mut c| {
            let id = id.to_string();
            async move { c.delete(&id).await }
        })
        .await;
        if let Some(a) = self.acked.lock().unwrap().get_mut(name) {
            a.deleted = true;
        }
    }
}

/// SIGKILLs the daemon and starts it again on the same state.
async fn kill_and_restart(daemon: &Arc<Mutex<Daemon>>) {
    let d = Arc::clone(daemon);
    tokio::task::spawn_blocking(move || {
        let mut d = d.lock().unwrap();
        d.kill9();
        d.restart();
    })
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let daemon = Arc::new(Mutex::new(Daemon::start("16GiB", &[])));
    let (socket, root, state) = {
        let d = daemon.lock().unwrap();
        (d.socket(), d.root().to_path_buf(), d.state_dir())
    };
    let soak = Arc::new(Soak {
        socket,
        root: root.join("paths"),
        acked: Mutex::new(BTreeMap::new()),
        figures: Mutex::new(Figures::default()),
    });

    // The killer: SIGKILL, then start again, every `interval` seconds.
    let killer = {
        let daemon = Arc::clone(&daemon);
        let (kills, interval) = (args.kills, args.interval);
        tokio::spawn(async move {
            for _ in 0..kills {
                tokio::time::sleep(Duration::from_secs(interval)).await;
                kill_and_restart(&daemon).await;
            }
        })
    };
    let mut workers = Vec::new();
    for kind in KINDS {
        let soak = Arc::clone(&soak);
        let count = args.lifecycles;
        workers.push(tokio::spawn(async move {
            for n in 0..count {
                soak.lifecycle(kind, n).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("a lifecycle worker failed");
    }
    killer.await.unwrap();
    // Killed once more after the last acknowledged step.
    kill_and_restart(&daemon).await;

    // Every acknowledged volume, and nothing else of the soak's.
    let mut c = soak.clients().await;
    let listed: std::collections::BTreeSet<String> = c.list_ids().await.into_iter().collect();
    let acked = soak.acked.lock().unwrap().clone();
    let expected: std::collections::BTreeSet<String> = acked
        .values()
        .filter(|a| !a.deleted)
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(listed, expected, "ListVolumes after the last restart");
    // Every fsynced byte of the kept volumes, then clean up.
    let mut verified = 0u64;
    for (name, a) in &acked {
        let Some((staging, target, data)) = &a.kept else {
            continue;
        };
        let got =
            std::fs::read(target.join("data")).unwrap_or_else(|e| panic!("{name}: read back: {e}"));
        assert!(got == *data, "{name}: data changed");
        // Again from the disk, not the page cache: unmounted, caches dropped, mounted
        // anew at another target.
        soak.retire_mounts(&a.id, staging, target).await;
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
        let again = root.join(format!("paths/t/{name}/again"));
        soak.mount(&a.id, staging, &again).await;
        let got = std::fs::read(again.join("data"))
            .unwrap_or_else(|e| panic!("{name}: read back from disk: {e}"));
        assert!(got == *data, "{name}: data on disk differs");
        verified += data.len() as u64;
        soak.retire(name, &a.id, staging, &again).await;
    }
    assert!(c.list_ids().await.is_empty(), "volumes left after cleanup");
    for dir in ["pool/volumes", "pool/snapshots"] {
        let left: Vec<_> = std::fs::read_dir(state.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{dir} still holds {left:?}");
    }
    let mounts = mounts_under(&root);
    // The embedded pool's own mount is the only one allowed to stay.
    let leaked: Vec<_> = mounts
        .iter()
        .filter(|m| **m != state.join("pool"))
        .collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:?}");
    let loops = loops_under(&state.join("pool"));
    assert!(loops.is_empty(), "loop devices left: {loops:?}");

    let f = soak.figures.lock().unwrap();
    let total = u64::from(args.lifecycles) * KINDS.len() as u64;
    println!(
        "soak: {total} lifecycles ({} per kind: dir, loop ext4, loop xfs), {} SIGKILLs, \
         {} failed RPCs retried, {} volumes acknowledged, {} kept and verified \
         ({verified} fsynced bytes read back), 0 mounts and 0 loop devices left, {:.0} s",
        args.lifecycles,
        args.kills + 1,
        f.retries,
        acked.len(),
        acked.values().filter(|a| a.kept.is_some()).count(),
        started.elapsed().as_secs_f64()
    );
}
