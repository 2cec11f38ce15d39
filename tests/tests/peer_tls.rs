//! The peer link over mutual TLS: daemons with certificates of the cluster CA talk
//! (and replicate); a daemon with a certificate of another CA, one without TLS, and one
//! that expects a different node behind the address are all refused.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use stowage_tests::Daemon;
use stowage_tests::vol::json_lines as vol_json;
use tonic::Code;

const SECRET: &str = "tls-and-a-secret";

/// A CA: its certificate and key.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// Writes `<dir>/<node>.crt`, `.key` and `ca.crt` for node `node` signed by `ca`;
/// returns the daemon flags that use them.
fn node_files(dir: &Path, ca: &Ca, node: &str) -> Vec<String> {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec![node.to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k, a) = (
        dir.join(format!("{node}.crt")),
        dir.join(format!("{node}.key")),
        dir.join(format!("ca-for-{node}.crt")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&a, ca.cert.pem()).unwrap();
    vec![
        "--peer-tls-cert".into(),
        c.display().to_string(),
        "--peer-tls-key".into(),
        k.display().to_string(),
        "--peer-tls-ca".into(),
        a.display().to_string(),
    ]
}

fn start(node: &str, mut args: Vec<String>, secret: &Path) -> Daemon {
    args.extend(["--cluster-secret-file".into(), secret.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_as(&[], node, "2GiB", &args)
}

async fn hello(d: &Daemon, node: &str) -> Result<pb::HelloResponse, tonic::Status> {
    let mut admin = AdminClient::new(stowage_cli::client::connect(&d.socket()).await.unwrap());
    admin
        .peer_hello(pb::PeerHelloRequest {
            node_id: node.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn mutual_tls_admits_the_cluster_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cluster = ca("stowage test cluster");
    let other = ca("someone else");

    let mut b_args = node_files(dir.path(), &cluster, "b");
    b_args.extend(["--peer-listen".into(), "127.0.0.1:0".into()]);
    let b = start("b", b_args, &secret);
    let addr = b.peer_addr();
    let peer = |name: &str| vec!["--peer".to_string(), format!("{name}={addr}")];

    // A member of the cluster: hello, and a replication stream over TLS.
    let mut a_args = node_files(dir.path(), &cluster, "a");
    a_args.extend(peer("b"));
    let a = start("a", a_args, &secret);
    let h = hello(&a, "b")
        .await
        .expect("the cluster's certificates are accepted");
    assert_eq!(h.node_id, "b");
    vol_json(&a, &["create", "tls", "--size", "64MiB"]);
    let id = vol_json(&a, &["inspect", "tls"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(a.volume_dir(&id).join("f"), b"over tls").unwrap();
    let sent = vol_json(&a, &["replicate", "tls", "--to", "b"]);
    assert_eq!(sent[0]["incremental"], false, "{sent:?}");
    let held = vol_json(&b, &["replica", "ls"]);
    let latest = std::path::PathBuf::from(held[0]["latest_path"].as_str().unwrap());
    assert_eq!(std::fs::read(latest.join("f")).unwrap(), b"over tls");

    // A certificate of another CA: refused by b's handshake.
    let mut c_args = node_files(dir.path(), &other, "c");
    c_args.extend(peer("b"));
    let c = start("c", c_args, &secret);
    let e = hello(&c, "b").await.expect_err("another CA's certificate");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // No TLS at all: refused.
    let d = start("d", peer("b"), &secret);
    // HTTP/2 in clear text meets a TLS handshake: a transport or protocol error
    // (the code depends on where the exchange breaks), never an answer.
    let e = hello(&d, "b").await.expect_err("plain TCP to a TLS peer");
    assert_ne!(
        e.code(),
        Code::Unauthenticated,
        "refused before any call: {e:?}"
    );

    // The right CA, but the node behind the address is not the one expected: the
    // server's certificate names b, the client asked for x.
    let mut e_args = node_files(dir.path(), &cluster, "e");
    e_args.extend(peer("x"));
    let e_daemon = start("e", e_args, &secret);
    let err = hello(&e_daemon, "x").await.expect_err("b is not x");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
