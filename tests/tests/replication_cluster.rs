//! Replication between three hosts: network namespaces on a bridge, each with its own
//! stowaged, embedded btrfs pool and address. One volume with `replicas=3` is followed
//! through its life: it appears checksum-identical on both replicas within two
//! intervals; a link cut mid-stream resumes and converges; the primary is killed
//! (SIGKILL) and a replica promoted, holding exactly the last acknowledged data; the
//! old primary restarts, finds the newer generation, keeps its divergent writes in a
//! snapshot and catches up incrementally as a replica; a daemon with a wrong cluster
//! secret is refused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use stowage_tests::cluster::Cluster;
use stowage_tests::vol::{json_lines as vol_json, ok as vol_ok};
use stowage_tests::{Daemon, pattern, sha256, write_synced};

const SECRET: &str = "three-hosts-share-this";
const PORT: u16 = 7420;
const MIB: usize = 1 << 20;
/// Replication interval of the test volume, seconds.
const INTERVAL: u64 = 3;
const NAMES: [&str; 3] = ["a", "b", "c"];

/// Host `i`'s daemon: peer service on its address, the other two as peers.
fn host(cluster: &Cluster, i: usize, secret: &str) -> Daemon {
    let prefix = cluster.prefix(i);
    let listen = format!("{}:{PORT}", cluster.addr(i));
    let mut args = vec![
        "--peer-listen".to_string(),
        listen,
        "--cluster-secret-file".into(),
        secret.to_string(),
    ];
    for (j, name) in NAMES.iter().enumerate() {
        if j != i {
            args.push("--peer".into());
            args.push(format!("{name}={}:{PORT}", cluster.addr(j)));
        }
    }
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_as(&prefix, NAMES[i], "4GiB", &args)
}

/// Polls `f` every 200 ms until it gives a value or `limit` passes.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `vol replica ls` entry of volume `id` on `d`.
fn replica(d: &Daemon, id: &str) -> Option<serde_json::Value> {
    vol_json(d, &["replica", "ls"])
        .into_iter()
        .find(|r| r["volume_id"] == id)
}

/// The newest copy of `file` in `d`'s replica of `id`, if it exists.
fn replica_file(d: &Daemon, id: &str, file: &str) -> Option<PathBuf> {
    let r = replica(d, id)?;
    let latest = r["latest_path"].as_str()?;
    if latest.is_empty() {
        return None;
    }
    Some(PathBuf::from(latest).join(file))
}

/// Waits until `d`'s replica of `id` holds `file` with `sum`.
fn wait_replica(d: &Daemon, id: &str, file: &str, sum: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    wait_for(&format!("{file} on a replica"), limit, || {
        let p = replica_file(d, id, file)?;
        (p.exists() && sha256(&p) == sum).then_some(())
    });
    start.elapsed()
}

fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
    vol_json(d, &["inspect", name]).remove(0)
}

/// CSI ControllerGetVolume of `id` on `d`.
async fn controller_volume(
    d: &Daemon,
    id: &str,
) -> stowage_proto::csi::v1::ControllerGetVolumeResponse {
    d.clients()
        .await
        .controller
        .controller_get_volume(stowage_proto::csi::v1::ControllerGetVolumeRequest {
            volume_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The replica nodes of an inspected volume, sorted.
fn replica_nodes(v: &serde_json::Value) -> Vec<String> {
    let mut nodes: Vec<String> = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node_id"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

/// The state `d` reports for replica node `node` of volume `name`.
fn link_state(d: &Daemon, name: &str, node: &str) -> String {
    let v = inspect(d, name);
    v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"] == node)
        .map(|r| r["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_replicate_resume_fail_over_and_resolve_split_brain() {
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret = secret.display().to_string();
    let cluster = Cluster::new(3, 231);
    let mut a = host(&cluster, 0, &secret);
    let b = host(&cluster, 1, &secret);
    let c = host(&cluster, 2, &secret);

    // --- A replicated volume: copies placed on both other hosts. ---
    let interval = format!("replicationInterval={INTERVAL}s");
    let created = vol_json(
        &a,
        &[
            "create",
            "rep",
            "--size",
            "512MiB",
            "-o",
            "replicas=3",
            "-o",
            &interval,
        ],
    );
    let id = created[0]["id"].as_str().unwrap().to_string();
    let v = inspect(&a, "rep");
    assert_eq!(v["copies"], 3);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["replication_interval_secs"], INTERVAL);
    assert_eq!(replica_nodes(&v), ["b", "c"]);
    // CSI reports only where the volume can be staged: its primary, not the replicas.
    let got = controller_volume(&a, &id).await;
    let mut topo: Vec<String> = got
        .volume
        .unwrap()
        .accessible_topology
        .iter()
        .map(|t| t.segments[stowage_daemon::TOPOLOGY_KEY].clone())
        .collect();
    topo.sort();
    assert_eq!(topo, ["a"]);

    // --- Written on the primary, on both replicas within two intervals. ---
    let vol_dir = a.volume_dir(&id);
    write_synced(&vol_dir.join("one.bin"), &pattern(16 * MIB, 1));
    let one = sha256(&vol_dir.join("one.bin"));
    let two_intervals = Duration::from_secs(2 * INTERVAL);
    // The first copy is a full stream; later ones must fit in two intervals.
    wait_replica(&b, &id, "one.bin", &one, Duration::from_secs(30));
    wait_replica(&c, &id, "one.bin", &one, Duration::from_secs(30));
    write_synced(&vol_dir.join("two.bin"), &pattern(4 * MIB, 2));
    let two = sha256(&vol_dir.join("two.bin"));
    let tb = wait_replica(&b, &id, "two.bin", &two, Duration::from_secs(30));
    let tc = wait_replica(&c, &id, "two.bin", &two, Duration::from_secs(30));
    eprintln!("a 4 MiB write reached b in {tb:?}, c in {tc:?} (interval {INTERVAL} s)");
    assert!(
        tb <= two_intervals && tc <= two_intervals,
        "replicas took {tb:?} and {tc:?}, more than two intervals"
    );
    wait_for("both links in sync", Duration::from_secs(10), || {
        (link_state(&a, "rep", "b") == "in sync" && link_state(&a, "rep", "c") == "in sync")
            .then_some(())
    });
    let v = inspect(&a, "rep");
    for r in v["replicas"].as_array().unwrap() {
        assert!(r["lag_seconds"].as_u64().unwrap() <= 2 * INTERVAL, "{r}");
        assert!(!r["snapshot"].as_str().unwrap().is_empty(), "{r}");
    }
    assert_eq!(v["condition"]["abnormal"], false, "{v}");

    // --- A link cut mid-stream: the stream resumes where it stopped. ---
    cluster.limit_egress(0, "40mbit");
    write_synced(&vol_dir.join("big.bin"), &pattern(96 * MIB, 3));
    let big = sha256(&vol_dir.join("big.bin"));
    let incoming = b.state_dir().join("pool/replicas").join(&id);
    wait_for("a stream under way to b", Duration::from_secs(20), || {
        std::fs::read_dir(&incoming)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    cluster.link_down(0);
    // Long enough for both ends' keepalives (5 s + 5 s) to give the connection up.
    std::thread::sleep(Duration::from_secs(16));
    let during = link_state(&a, "rep", "b");
    cluster.link_up(0);
    cluster.unlimit(0);
    wait_replica(&b, &id, "big.bin", &big, Duration::from_secs(60));
    wait_replica(&c, &id, "big.bin", &big, Duration::from_secs(60));
    assert!(
        during == "degraded" || during == "syncing",
        "state while the link was down: {during}"
    );
    assert!(
        b.log().contains("stream cut off; kept to resume"),
        "b kept the cut-off stream:\n{}",
        b.log()
    );
    assert!(
        a.log().contains("resuming a cut-off stream"),
        "a resumed rather than restarted:\n{}",
        a.log()
    );
    // ... and the replicas took the rest: no refused resumption, no full resend.
    for l in [
        "no cut-off stream",
        "sending it again in full",
        "cut-off stream does not match",
    ] {
        assert!(!a.log().contains(l), "{l}:\n{}", a.log());
    }

    // --- Failover: the primary dies; its last writes never reached anyone. ---
    vol_ok(&a, &["modify", "rep", "replicationInterval=1h"]);
    let acked = wait_for("acknowledged snapshots", Duration::from_secs(10), || {
        let v = inspect(&a, "rep");
        let snaps: Vec<String> = v["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["snapshot"].as_str().unwrap().to_string())
            .collect();
        (snaps.len() == 2 && snaps[0] == snaps[1]).then(|| snaps[0].clone())
    });
    write_synced(
        &vol_dir.join("divergent.txt"),
        b"written on a after its last replication",
    );
    a.kill9();
    // b promotes exactly the snapshot a recorded as acknowledged.
    let held = replica(&b, &id).unwrap();
    let newest = held["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(newest, acked.as_str(), "{held}");

    let promoted = vol_json(&b, &["promote", "rep"]);
    assert_eq!(promoted[0]["id"], id.as_str());
    let v = inspect(&b, "rep");
    assert!(v["generation"].as_u64().unwrap() > 1, "{v}");
    let b_dir = b.volume_dir(&id);
    // The promoted copy is exactly the last acknowledged snapshot.
    assert_eq!(sha256(&b_dir.join("one.bin")), one);
    assert_eq!(sha256(&b_dir.join("two.bin")), two);
    assert_eq!(sha256(&b_dir.join("big.bin")), big);
    assert!(!b_dir.join("divergent.txt").exists());
    assert_eq!(
        replica_nodes(&v),
        ["a", "c"],
        "the old primary is now a replica node"
    );
    // The new primary's writes reach c, incrementally (c held the same snapshots).
    vol_ok(&b, &["modify", "rep", "replicationInterval=2s"]);
    write_synced(&b_dir.join("after.bin"), &pattern(2 * MIB, 4));
    let after = sha256(&b_dir.join("after.bin"));
    wait_replica(&c, &id, "after.bin", &after, Duration::from_secs(30));
    let rc = replica(&c, &id).unwrap();
    assert!(
        rc["latest_stream_bytes"].as_u64().unwrap() < 16 * MIB as u64,
        "c caught up incrementally: {rc}"
    );
    // a is down: b reports its copy degraded, also as CSI's volume condition.
    wait_for("a reported degraded", Duration::from_secs(15), || {
        (link_state(&b, "rep", "a") == "degraded").then_some(())
    });
    let got = controller_volume(&b, &id).await;
    let cond = got.status.unwrap().volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    assert!(
        cond.message.contains("replica on a is degraded"),
        "{cond:?}"
    );

    // --- The old primary returns: split brain found, data kept, resynced. ---
    a.restart();
    wait_for("a to step down", Duration::from_secs(30), || {
        replica(&a, &id).filter(|r| !r["split_brain"].is_null())
    });
    let vols = vol_json(&a, &["ls"]);
    assert!(
        vols.iter().all(|v| v["id"] != id.as_str()),
        "a no longer serves the volume: {vols:?}"
    );
    let snaps = vol_json(&a, &["snapshot", "ls"]);
    let kept = snaps
        .iter()
        .find(|s| s["name"] == "split-brain-rep-g1")
        .unwrap_or_else(|| panic!("no split-brain snapshot on a: {snaps:?}"));
    let kept_dir = a
        .state_dir()
        .join("pool/snapshots")
        .join(kept["id"].as_str().unwrap());
    assert_eq!(
        std::fs::read(kept_dir.join("divergent.txt")).unwrap(),
        b"written on a after its last replication"
    );
    wait_for("a to log the split brain", Duration::from_secs(5), || {
        a.log()
            .contains("split brain: this node was primary")
            .then_some(())
    });
    wait_replica(&a, &id, "after.bin", &after, Duration::from_secs(30));
    let ra = replica(&a, &id).unwrap();
    assert!(
        ra["latest_stream_bytes"].as_u64().unwrap() < 16 * MIB as u64,
        "a caught up incrementally, not from scratch: {ra}"
    );
    let latest = PathBuf::from(ra["latest_path"].as_str().unwrap());
    assert!(!latest.join("divergent.txt").exists());
    assert_eq!(sha256(&latest.join("big.bin")), big);
    wait_for("b sees a in sync", Duration::from_secs(15), || {
        (link_state(&b, "rep", "a") == "in sync").then_some(())
    });

    // --- Deleting the volume on its primary removes the copies too. ---
    vol_ok(&b, &["rm", "rep"]);
    for (name, d) in [("a", &a), ("c", &c)] {
        wait_for(
            &format!("{name} to drop its copy"),
            Duration::from_secs(15),
            || replica(d, &id).is_none().then_some(()),
        );
        let dir = d.state_dir().join("pool/replicas").join(&id);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    // --- A daemon with the wrong secret is refused by every host. ---
    let wrong = keys.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let prefix = cluster.prefix(2);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let peer = format!("b={}:{PORT}", cluster.addr(1));
    let intruder = Daemon::start_as(
        &prefix,
        "intruder",
        "1GiB",
        &[
            "--cluster-secret-file",
            wrong.to_str().unwrap(),
            "--peer",
            &peer,
        ],
    );
    let mut admin = AdminClient::new(
        stowage_cli::client::connect(&intruder.socket())
            .await
            .unwrap(),
    );
    let err = admin
        .peer_hello(pb::PeerHelloRequest {
            node_id: "b".into(),
        })
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(b.log().contains("peer call refused"));
}
