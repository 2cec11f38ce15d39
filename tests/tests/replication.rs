//! Replication between two real daemons on 127.0.0.1, each with its own state
//! directory and embedded btrfs pool: the peer service refuses a wrong cluster secret,
//! and `vol replicate` ships a loop and a directory volume to the peer — checked by
//! the bytes on both sides — first in full, then incrementally.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use stowage_tests::secret_file;
use stowage_tests::vol::json_lines as vol_json;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use stowage_proto::stowage::v1::peer_client::PeerClient;
use stowage_tests::{Daemon, NODE_ID, pattern, sha256};
use tonic::Code;

const MIB: usize = 1 << 20;
const SECRET: &str = "correct-horse-battery-staple";
const WRONG: &str = "not-the-cluster-secret";

/// A daemon serving the peer service on a free port of 127.0.0.1.
fn replica_daemon(secret: &str) -> Daemon {
    Daemon::start(
        "4GiB",
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--cluster-secret-file",
            secret,
        ],
    )
}

/// A daemon that knows `peer` as node `b`.
fn primary_daemon(secret: &str, peer: &str) -> Daemon {
    let peer = format!("b={peer}");
    Daemon::start("4GiB", &["--cluster-secret-file", secret, "--peer", &peer])
}

async fn admin(d: &Daemon) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(stowage_cli::client::connect(&d.socket()).await.unwrap())
}

/// Writes `data` at `offset` of `path` and syncs it.
fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn peer_with_wrong_cluster_secret_is_refused_and_right_one_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let right = secret_file(keys.path(), "right", SECRET);
    let wrong = secret_file(keys.path(), "wrong", WRONG);
    let b = replica_daemon(&right);
    let addr = b.peer_addr();
    let a = primary_daemon(&right, &addr);
    let c = primary_daemon(&wrong, &addr);

    let hello = admin(&a)
        .await
        .peer_hello(pb::PeerHelloRequest {
            node_id: "b".into(),
        })
        .await
        .expect("the right secret is accepted")
        .into_inner();
    assert_eq!(hello.node_id, NODE_ID);
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));

    let refused = admin(&c)
        .await
        .peer_hello(pb::PeerHelloRequest {
            node_id: "b".into(),
        })
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // No secret at all, straight to the peer port.
    let mut bare = PeerClient::connect(format!("http://{addr}")).await.unwrap();
    let refused = bare
        .hello(pb::HelloRequest {
            node_id: "x".into(),
        })
        .await
        .expect_err("no secret is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = bare
        .replica_state(pb::ReplicaStateRequest {
            volume_id: format!("v-{}", "0".repeat(32)),
        })
        .await
        .expect_err("every peer call needs the secret");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // An unconfigured peer is NOT_FOUND.
    let unknown = admin(&a)
        .await
        .peer_hello(pb::PeerHelloRequest {
            node_id: "zz".into(),
        })
        .await
        .expect_err("unknown peer");
    assert_eq!(unknown.code(), Code::NotFound);

    // B logged each refusal with the caller's address and never a secret.
    let log = b.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("peer call refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(refusals.iter().all(|l| l.contains("127.0.0.1:")), "{log}");
    for l in [&log, &a.log(), &c.log()] {
        assert!(
            !l.contains(SECRET) && !l.contains(WRONG),
            "a secret was logged"
        );
    }
}

/// sha256 of `data.bin` inside the ext4 image `image`, mounted read-only (without
/// journal replay: the snapshot was taken with the filesystem frozen) on `mnt`.
fn sha256_in_image(image: &Path, mnt: &Path) -> String {
    std::fs::create_dir_all(mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,noload,loop"])
        .arg(image)
        .arg(mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount {}", image.display());
    let sum = sha256(&mnt.join("data.bin"));
    let status = Command::new("umount").arg(mnt).status().unwrap();
    assert!(status.success(), "umount {}", mnt.display());
    sum
}

/// The newest replica of `volume_id` on `d`: (snapshot names, latest path).
fn replica_on(d: &Daemon, volume_id: &str) -> (Vec<String>, PathBuf) {
    let list = vol_json(d, &["replica", "ls"]);
    let r = list
        .iter()
        .find(|r| r["volume_id"] == volume_id)
        .unwrap_or_else(|| panic!("no replica of {volume_id}: {list:?}"));
    let snaps = r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (snaps, PathBuf::from(r["latest_path"].as_str().unwrap()))
}

/// Creates `rep` on a primary, writes 32 MiB, replicates in full to b, writes 1 MiB
/// more, replicates incrementally; after each, the replica's snapshot is byte-equal to
/// the primary's (`file` inside the snapshot: the image or the data file).
async fn full_then_incremental(params: &[(&str, &str)], file: &str) -> (u64, u64) {
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "secret", SECRET);
    let b = replica_daemon(&secret);
    let a = primary_daemon(&secret, &b.peer_addr());
    let mut c = a.clients().await;
    let id = c.create("rep", 256 * MIB as i64, params).await;
    let (staging, target) = (a.root().join("staging"), a.root().join("target"));
    c.stage_and_publish(&id, &staging, &target).await;
    let data = target.join("data.bin");
    write_at(&data, 0, &pattern(32 * MIB, 1));
    let written = sha256(&data);

    let r1 = vol_json(&a, &["replicate", "rep", "--to", "b"]);
    assert_eq!(r1.len(), 1, "{r1:?}");
    assert_eq!(r1[0]["snapshot"], "1-g1");
    assert_eq!(r1[0]["incremental"], false);
    let full = r1[0]["bytes_sent"].as_u64().unwrap();
    assert!(
        full >= 32 * MIB as u64,
        "a full stream holds the data: {full}"
    );

    let ours = a.state_dir().join("pool/replication").join(&id);
    let (snaps, latest) = replica_on(&b, &id);
    assert_eq!(snaps, ["1-g1"]);
    let replica_dir = b.state_dir().join("pool/replicas").join(&id);
    assert_eq!(latest, replica_dir.join("1-g1/data"));
    assert_eq!(
        sha256(&latest.join(file)),
        sha256(&ours.join("1-g1/data").join(file))
    );
    let check = |latest: &Path, expected: &str, n: &str| {
        let got = if file == "disk.img" {
            sha256_in_image(&latest.join(file), &b.root().join(format!("check-{n}")))
        } else {
            sha256(&latest.join(file))
        };
        assert_eq!(got, expected, "data.bin in the replica's snapshot {n}");
    };
    check(&latest, &written, "1-g1");
    let first_sum = sha256(&latest.join(file));

    write_at(&data, 32 * MIB as u64, &pattern(MIB, 2));
    let written2 = sha256(&data);
    let r2 = vol_json(&a, &["replicate", "rep", "--to", "b"]);
    assert_eq!(r2[0]["snapshot"], "2-g1");
    assert_eq!(r2[0]["parent"], "1-g1");
    assert_eq!(r2[0]["incremental"], true);
    let incremental = r2[0]["bytes_sent"].as_u64().unwrap();
    let (snaps, latest) = replica_on(&b, &id);
    assert_eq!(snaps, ["1-g1", "2-g1"]);
    assert_eq!(latest, replica_dir.join("2-g1/data"));
    assert_eq!(
        sha256(&latest.join(file)),
        sha256(&ours.join("2-g1/data").join(file))
    );
    check(&latest, &written2, "2-g1");
    // The primary records what the peer acknowledged.
    let inspect = vol_json(&a, &["inspect", "rep"]);
    assert_eq!(inspect[0]["replicas"][0]["node_id"], "b");
    assert_eq!(inspect[0]["replicas"][0]["snapshot"], "2-g1");
    assert_eq!(inspect[0]["replicas"][0]["bytes_sent"], incremental);
    // The replica keeps the first snapshot too (its newest three); the primary keeps
    // only what a peer acknowledged last, the parent of the next stream.
    assert_eq!(sha256(&replica_dir.join("1-g1/data").join(file)), first_sum);
    assert!(!ours.join("1-g1").exists(), "the primary pruned 1-g1");
    // Nothing half-received is left on the replica.
    let left: Vec<_> = std::fs::read_dir(&replica_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // Replication snapshots are not CSI snapshots.
    let snaps = vol_json(&a, &["snapshot", "ls"]);
    assert!(snaps.is_empty(), "{snaps:?}");

    c.unpublish_and_unstage(&id, &staging, &target).await;
    // The peer's copy can be removed there by hand.
    stowage_tests::vol::ok(&b, &["replica", "rm", "rep"]);
    assert!(!replica_dir.exists());
    assert!(vol_json(&b, &["replica", "ls"]).is_empty());
    (full, incremental)
}

#[tokio::test]
async fn loop_volume_replicates_in_full_then_incrementally() {
    let (full, incremental) =
        full_then_incremental(&[("kind", "loop"), ("fsType", "ext4")], "disk.img").await;
    println!("loop ext4: full send {full} bytes, incremental after 1 MiB {incremental} bytes");
    assert!(
        incremental * 5 < full,
        "incremental {incremental} not below 20% of full {full}"
    );
}

#[tokio::test]
async fn dir_volume_replicates_in_full_then_incrementally() {
    let (full, incremental) = full_then_incremental(&[("kind", "dir")], "data.bin").await;
    println!("dir: full send {full} bytes, incremental after 1 MiB {incremental} bytes");
    assert!(
        incremental * 5 < full,
        "incremental {incremental} not below 20% of full {full}"
    );
}

/// The body of a plain HTTP/1.0 GET of /metrics.
fn scrape(addr: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Two daemons on plain directory pools (not btrfs): a staged ext4 loop volume with
/// `replicas=2` is replicated on its schedule by chunk diff — frozen while copied,
/// the first stream full, the next one only the changed chunks — and each copy on the
/// peer holds what was written.
#[tokio::test]
async fn plain_pools_replicate_a_staged_loop_volume_by_chunk_diff() {
    let keys = tempfile::tempdir().unwrap();
    let secret = secret_file(keys.path(), "s", SECRET);
    let pools = tempfile::Builder::new()
        .prefix("stowage-plain-rep-")
        .tempdir()
        .unwrap();
    let (pa, pb) = (pools.path().join("a"), pools.path().join("b"));
    std::fs::create_dir_all(&pa).unwrap();
    std::fs::create_dir_all(&pb).unwrap();
    let pool_b = format!("dir:{}", pb.display());
    let b = Daemon::start_as(
        &[],
        "b",
        "1GiB",
        &[
            "--pool",
            &pool_b,
            "--peer-listen",
            "127.0.0.1:0",
            "--cluster-secret-file",
            &secret,
        ],
    );
    let peer = format!("b={}", b.peer_addr());
    let pool_a = format!("dir:{}", pa.display());
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let a = Daemon::start(
        "1GiB",
        &[
            "--pool",
            &pool_a,
            "--cluster-secret-file",
            &secret,
            "--peer",
            &peer,
            "--metrics-address",
            &metrics,
        ],
    );
    let mut c = a.clients().await;
    let id = c
        .create(
            "plain-rep",
            64 << 20,
            &[
                ("kind", "loop"),
                ("replicas", "2"),
                ("replicationInterval", "2s"),
            ],
        )
        .await;
    let staging = a.root().join("staging");
    let target = a.root().join("target");
    c.stage_and_publish(&id, &staging, &target).await;
    let data = target.join("data.bin");

    // Waits for a snapshot on b newer than `after` whose data.bin has `sum`.
    let wait = |after: &str, sum: &str| -> (String, u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        let mut checked = String::new();
        loop {
            let list = vol_json(&b, &["replica", "ls"]);
            if let Some(r) = list.iter().find(|r| r["volume_id"] == id.as_str()) {
                let snaps = r["snapshots"].as_array().unwrap();
                let latest = snaps.last().unwrap().as_str().unwrap().to_string();
                if latest != after && latest != checked {
                    checked = latest.clone();
                    let path = PathBuf::from(r["latest_path"].as_str().unwrap());
                    let mnt = b.root().join(format!("check-{latest}"));
                    if sha256_in_image(&path.join("disk.img"), &mnt) == sum {
                        return (latest, r["latest_stream_bytes"].as_u64().unwrap());
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "b never held data.bin {sum}: {list:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };

    write_at(&data, 0, &pattern(8 * MIB, 11));
    let first = wait("", &sha256(&data));
    write_at(&data, 3 * MIB as u64, &pattern(MIB, 12));
    let second = wait(&first.0, &sha256(&data));
    eprintln!(
        "plain pools: first stream {} bytes, after a 1 MiB change {} bytes",
        first.1, second.1
    );
    // 1 MiB of data plus the chunks ext4's journal and metadata touched, not the
    // whole image again.
    assert!(
        second.1 < 6 * MIB as u64 && second.1 < first.1 / 2,
        "the second stream carries changed chunks only: {} vs {}",
        second.1,
        first.1
    );
    let v = vol_json(&a, &["inspect", "plain-rep"]);
    assert_eq!(v[0]["replicas"][0]["node_id"], "b");
    // The metrics carry the link's state and lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let in_sync =
        format!("stowage_replica_state{{volume_id=\"{id}\",node_id=\"b\",state=\"in sync\"}} 1");
    loop {
        let body = scrape(&metrics);
        if body.contains(&in_sync) {
            assert!(
                body.contains(&format!(
                    "stowage_replica_lag_seconds{{volume_id=\"{id}\",node_id=\"b\"}}"
                )),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in sync:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    c.unpublish_and_unstage(&id, &staging, &target).await;
}
