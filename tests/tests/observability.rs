//! The metrics endpoint after real RPCs, and /healthz.

use std::io::{Read, Write};
use std::net::TcpStream;

use stowage_proto::csi::v1 as csi;
use stowage_tests::Daemon;

/// A plain HTTP/1.0 GET, returning status line and body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics address");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code_and_healthz_answers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start("2GiB", &["--metrics-address", &addr]);
    let mut c = daemon.clients().await;
    let id = c.create("metered", 16 << 20, &[("kind", "dir")]).await;
    c.create("metered", 16 << 20, &[("kind", "dir")]).await;
    c.delete(&id).await.unwrap();
    let missing = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let addr_for_thread = addr.clone();
    let (status, body) =
        tokio::task::spawn_blocking(move || http_get(&addr_for_thread, "/metrics"))
            .await
            .unwrap();
    assert!(status.contains("200"), "{status}");
    let line = |needle: &str| {
        body.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting with {needle} in:\n{body}"))
            .to_string()
    };
    let create = line(
        "csi_plugin_operations_seconds_count{driver_name=\"csi.stowage.dev\",method_name=\"CreateVolume\",grpc_status_code=\"Ok\"}",
    );
    assert!(create.ends_with(" 2"), "{create}");
    let delete = line(
        "csi_plugin_operations_seconds_count{driver_name=\"csi.stowage.dev\",method_name=\"DeleteVolume\",grpc_status_code=\"Ok\"}",
    );
    assert!(delete.ends_with(" 1"), "{delete}");
    let not_found = line(
        "csi_plugin_operations_seconds_count{driver_name=\"csi.stowage.dev\",method_name=\"ControllerGetVolume\",grpc_status_code=\"NotFound\"}",
    );
    assert!(not_found.ends_with(" 1"), "{not_found}");
    assert!(
        body.contains("csi_plugin_operations_seconds_bucket{"),
        "histogram buckets"
    );
    let capacity = line("stowage_pool_capacity_bytes ");
    let bytes: u64 = capacity.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 1 << 30, "{capacity}");
    assert!(line("stowage_volumes{kind=\"dir\"}").ends_with(" 0"));

    let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/healthz"))
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");
    drop(daemon);
}
