//! A peer that holds the cluster secret still cannot write outside the receiving
//! directory with a crafted btrfs send stream: real replica daemon, real `btrfs
//! receive` (root).

use std::path::Path;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::peer_client::PeerClient;
use stowage_tests::Daemon;

const SECRET: &str = "correct-horse-battery-staple";

/// One send-stream command (version 1): attributes as (type, value).
fn command(cmd: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (kind, value) in attrs {
        payload.extend_from_slice(&kind.to_le_bytes());
        payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
        payload.extend_from_slice(value);
    }
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&cmd.to_le_bytes());
    // The crc (crc32c of the command with this field zero) is filled in below.
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32c(&out);
    out[6..10].copy_from_slice(&crc.to_le_bytes());
    out
}

/// CRC-32C (Castagnoli), as btrfs receive checks each command with, seeded with 0.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

const C_SUBVOL: u16 = 1;
const C_MKFILE: u16 = 3;
const C_SYMLINK: u16 = 8;
const C_WRITE: u16 = 15;
const C_END: u16 = 21;
const A_UUID: u16 = 1;
const A_CTRANSID: u16 = 2;
const A_INO: u16 = 3;
const A_PATH: u16 = 15;
const A_PATH_LINK: u16 = 17;
const A_FILE_OFFSET: u16 = 18;
const A_DATA: u16 = 19;

/// A full stream making subvolume `data` and then running `body`.
fn stream(body: &[Vec<u8>]) -> Vec<u8> {
    let mut s = b"btrfs-stream\0".to_vec();
    s.extend_from_slice(&1u32.to_le_bytes());
    s.extend(command(
        C_SUBVOL,
        &[
            (A_PATH, b"data"),
            (A_UUID, &[0x5a; 16]),
            (A_CTRANSID, &7u64.to_le_bytes()),
        ],
    ));
    for c in body {
        s.extend_from_slice(c);
    }
    s.extend(command(C_END, &[]));
    s
}

fn write_file(path: &[u8], data: &[u8]) -> Vec<Vec<u8>> {
    vec![
        command(C_MKFILE, &[(A_PATH, path), (A_INO, &300u64.to_le_bytes())]),
        command(
            C_WRITE,
            &[
                (A_PATH, path),
                (A_FILE_OFFSET, &0u64.to_le_bytes()),
                (A_DATA, data),
            ],
        ),
    ]
}

async fn send(addr: &str, volume_id: &str, bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let mut client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
    let digest = blake3::hash(&bytes);
    let len = bytes.len() as u64;
    let chunks = vec![
        pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Header(pb::SnapshotHeader {
                volume_id: volume_id.to_string(),
                name: "evil".into(),
                kind: "dir".into(),
                capacity_bytes: 1 << 30,
                snapshot: "1-g1".into(),
                source_node_id: "mallory".into(),
                generation: 1,
                stream_format: "btrfs".into(),
                ..Default::default()
            })),
        },
        pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Data(bytes)),
        },
        pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Trailer(pb::SnapshotTrailer {
                blake3: digest.as_bytes().to_vec(),
                length: len,
            })),
        },
    ];
    let mut req = tonic::Request::new(tokio_stream::iter(chunks));
    req.metadata_mut().insert(
        stowage_daemon::replication::link::SECRET_METADATA_KEY,
        SECRET.parse().unwrap(),
    );
    client.receive_snapshot(req).await.map(|_| ())
}

#[tokio::test]
async fn crafted_send_streams_write_nothing_outside_the_receiving_directory() {
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let d = Daemon::start(
        "4GiB",
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--cluster-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let addr = d.peer_addr();
    let addr = addr.as_str();
    let id = format!("v-{}", "e".repeat(32));
    // <root>/state/pool/replicas/<id>/incoming-<n>/data: six levels below <root>.
    let escaped = d.root().join("escaped");
    let climb = b"../../../../../../escaped".to_vec();
    let through_link = {
        let mut body = vec![command(
            C_SYMLINK,
            &[
                (A_PATH, b"evil"),
                (A_INO, &301u64.to_le_bytes()),
                (A_PATH_LINK, d.root().to_str().unwrap().as_bytes()),
            ],
        )];
        body.extend(write_file(b"evil/escaped", b"root was here"));
        body
    };
    for (what, body) in [
        ("a .. path", write_file(&climb, b"root was here")),
        (
            "an absolute path",
            write_file(escaped.to_str().unwrap().as_bytes(), b"x"),
        ),
        ("a path through a link it made", through_link),
    ] {
        let err = send(addr, &id, stream(&body)).await.expect_err(what);
        assert!(!escaped.exists(), "{what}: wrote {}", escaped.display());
        assert_ne!(err.code(), tonic::Code::Ok, "{what}");
        let replica_dir = d.state_dir().join("pool/replicas").join(&id);
        assert!(
            !replica_dir.exists(),
            "{what}: {} left behind",
            replica_dir.display()
        );
    }
    // A sound stream of the same shape is taken: the refusals were the paths.
    send(addr, &id, stream(&write_file(b"kept", b"fine")))
        .await
        .expect("a sound stream");
    let kept = d
        .state_dir()
        .join("pool/replicas")
        .join(&id)
        .join("1-g1/data/kept");
    assert_eq!(std::fs::read(&kept).unwrap(), b"fine");
    assert!(!Path::new(&escaped).exists());
}
