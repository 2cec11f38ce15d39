//! `stowaged --cluster-controller` over two real node daemons (root): each call
//! reaches the node that owns its volume over the authenticated peer link; a new
//! volume goes where its topology prefers; a restore onto a node without the snapshot
//! is RESOURCE_EXHAUSTED (the provisioner reschedules), never NOT_FOUND; a node that
//! does not answer makes an answer UNAVAILABLE, never wrong.

use std::collections::HashMap;

use stowage_proto::csi::v1 as csi;
use stowage_tests::{Daemon, create_req, secret_file, snapshot_source, volume_source};
use tonic::Code;

const SECRET: &str = "cluster-controller-test-secret";
const TOPOLOGY_KEY: &str = "topology.stowage.dev/node";
const MIB: i64 = 1 << 20;

/// A node daemon `id` serving the peer listener (and so its CSI Controller there) on
/// a fixed port, so that a restart keeps the address the controller was given.
fn node(id: &str, secret: &str) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    Daemon::start_as(
        &[],
        id,
        "4GiB",
        &["--peer-listen", &listen, "--cluster-secret-file", secret],
    )
}

/// The cluster controller over `nodes`, presenting `secret`.
fn controller(nodes: &[(&str, &Daemon)], secret: &str) -> Daemon {
    let peers: Vec<String> = nodes
        .iter()
        .map(|(id, d)| format!("{id}={}", d.peer_addr()))
        .collect();
    let mut args = vec!["--cluster-controller", "--cluster-secret-file", secret];
    for p in &peers {
        args.extend(["--peer", p.as_str()]);
    }
    Daemon::start_as(&[], "controller", "1GiB", &args)
}

fn on(node: &str) -> csi::TopologyRequirement {
    let t = csi::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]),
    };
    csi::TopologyRequirement {
        requisite: vec![t.clone()],
        preferred: vec![t],
    }
}

fn placed(name: &str, node: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        accessibility_requirements: Some(on(node)),
        ..create_req(name, 64 * MIB, &[])
    }
}

/// A volume made through the controller `c` on `node`.
async fn create_on(c: &mut stowage_tests::Clients, name: &str, node: &str) -> csi::Volume {
    c.controller
        .create_volume(placed(name, node))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

fn topology_node(v: &csi::Volume) -> String {
    assert_eq!(v.accessible_topology.len(), 1, "{v:?}");
    v.accessible_topology[0].segments[TOPOLOGY_KEY].clone()
}

async fn volume_ids(d: &Daemon) -> Vec<String> {
    let mut c = d.clients().await;
    let mut ids: Vec<String> = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_cluster_controller_carries_each_call_to_the_owning_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "cluster-secret", SECRET);
    let a = node("a", &secret);
    let b = node("b", &secret);
    let ctl = controller(&[("a", &a), ("b", &b)], &secret);
    let mut c = ctl.clients().await;

    let info = c
        .identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.stowage.dev");

    // A volume goes to the node its topology prefers, and only that node holds it.
    let on_b = create_on(&mut c, "pvc-on-b", "b").await;
    assert_eq!(topology_node(&on_b), "b");
    assert_eq!(volume_ids(&b).await, std::slice::from_ref(&on_b.volume_id));
    assert!(volume_ids(&a).await.is_empty());
    // The same name again is the same volume (the node's idempotency).
    let again = create_on(&mut c, "pvc-on-b", "b").await;
    assert_eq!(again.volume_id, on_b.volume_id);
    let on_a = create_on(&mut c, "pvc-on-a", "a").await;
    assert_eq!(topology_node(&on_a), "a");

    // Expansion reaches b's volume (a node-local resizer on a would answer NOT_FOUND).
    let expanded = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: on_b.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 128 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(expanded.capacity_bytes >= 128 * MIB);
    let mut bc = b.clients().await;
    let seen_on_b = bc
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: on_b.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(seen_on_b.capacity_bytes >= 128 * MIB);

    // Listing merges both nodes, paged in id order.
    let mut all = [on_a.volume_id.clone(), on_b.volume_id.clone()];
    all.sort();
    let first = c
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 1);
    assert_eq!(first.entries[0].volume.as_ref().unwrap().volume_id, all[0]);
    let second = c
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: first.next_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.entries[0].volume.as_ref().unwrap().volume_id, all[1]);
    assert!(second.next_token.is_empty());

    // Snapshots live with their volume.
    let snap = c
        .controller
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: on_b.volume_id.clone(),
            name: "snap-of-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let listed = bc
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "the snapshot is on b");

    // A restore scheduled onto a, which lacks the snapshot: RESOURCE_EXHAUSTED, so the
    // provisioner reschedules; NOT_FOUND would fail the claim for good.
    let mut restore_on_a = placed("restore-on-a", "a");
    restore_on_a.volume_content_source = Some(snapshot_source(&snap.snapshot_id));
    let e = c.controller.create_volume(restore_on_a).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        volume_ids(&a).await == [on_a.volume_id.clone()],
        "nothing made on a"
    );
    // The same on b works, and so does a clone there.
    let mut restore_on_b = placed("restore-on-b", "b");
    restore_on_b.volume_content_source = Some(snapshot_source(&snap.snapshot_id));
    let restored = c
        .controller
        .create_volume(restore_on_b)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(topology_node(&restored), "b");
    let mut clone_on_a = placed("clone-on-a", "a");
    clone_on_a.volume_content_source = Some(volume_source(&on_b.volume_id));
    let e = c.controller.create_volume(clone_on_a).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A source that exists nowhere is NOT_FOUND.
    let mut from_nothing = placed("from-nothing", "a");
    from_nothing.volume_content_source =
        Some(snapshot_source("s-00000000000000000000000000000000"));
    let e = c.controller.create_volume(from_nothing).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Capacity per node is that node's own answer.
    let cap_of = |t: Option<csi::Topology>| csi::GetCapacityRequest {
        accessible_topology: t,
        ..Default::default()
    };
    let b_topology = on("b").preferred[0].clone();
    let via_ctl = c
        .controller
        .get_capacity(cap_of(Some(b_topology.clone())))
        .await
        .unwrap()
        .into_inner();
    let direct = bc
        .controller
        .get_capacity(cap_of(Some(b_topology)))
        .await
        .unwrap()
        .into_inner();
    assert!(via_ctl.available_capacity > 0);
    // Both read the same pool moments apart: within 1% of each other.
    let diff = (via_ctl.available_capacity - direct.available_capacity).abs();
    assert!(
        diff * 100 <= direct.available_capacity,
        "{via_ctl:?} {direct:?}"
    );
    let unknown = on("z").preferred[0].clone();
    let none = c
        .controller
        .get_capacity(cap_of(Some(unknown)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.available_capacity, 0);

    // Deletes reach the owner; a second delete is a success.
    for id in [&snap.snapshot_id] {
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for v in [&on_b, &restored] {
        for _ in 0..2 {
            c.controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    assert!(volume_ids(&b).await.is_empty());
    // Required fields are checked here, before any node is asked.
    let e = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_silent_node_makes_answers_unavailable_not_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "cluster-secret", SECRET);
    let a = node("a", &secret);
    let mut b = node("b", &secret);
    let ctl = controller(&[("a", &a), ("b", &b)], &secret);
    let mut c = ctl.clients().await;
    let on_a = create_on(&mut c, "survivor", "a").await;
    let on_b = create_on(&mut c, "stranded", "b").await;
    b.stop();

    // b's volume may still exist: its delete must not be reported done.
    let e = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: on_b.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("b"), "{}", e.message());
    // A listing without b would look as if its volumes were gone.
    let e = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    // a's volume is still served.
    c.controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: on_a.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 96 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    // b back: the controller reconnects and the delete goes through.
    b.restart();
    let mut deleted = false;
    for _ in 0..50 {
        match c
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: on_b.volume_id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                deleted = true;
                break;
            }
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(deleted, "the delete went through once b was back");
    assert!(volume_ids(&b).await.is_empty());
}

#[tokio::test]
async fn a_controller_without_the_secret_reaches_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "cluster-secret", SECRET);
    let a = node("a", &secret);
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = secret_file(wrong_dir.path(), "cluster-secret", "not-the-cluster-secret");
    let ctl = controller(&[("a", &a)], &wrong);
    let mut c = ctl.clients().await;
    let e = c
        .controller
        .create_volume(placed("refused", "a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(volume_ids(&a).await.is_empty());
}
