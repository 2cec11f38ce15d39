//! Image volumes against a real daemon: layers imported with `vol layer import`, an
//! image volume made by CSI CreateVolume, published as a kernel overlay (and as a
//! stowage-overlay FUSE mount) with a writable layer per target that a persistent
//! volume keeps across unpublish, restored after a lost mount, an inline ephemeral
//! image volume that leaves nothing behind, and layers that cannot be removed while a
//! volume uses them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stowage_tests::vol::{fails, json, ok};

use stowage_proto::csi::v1 as csi;
use stowage_tests::{Clients, Daemon, mount_cap, mounts_under};
use tonic::Code;

const MIB: i64 = 1 << 20;

/// One tar entry: a directory (`None`) or a file with its content.
type Entry<'a> = (&'a str, Option<&'a [u8]>);

/// Writes a layer tarball of `entries`.
fn layer_tar(path: &Path, entries: &[Entry<'_>]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create tarball"));
    for (name, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match content {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Some(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap().sync_all().unwrap();
}

/// The two layers every test uses: a base, and a top layer that shadows one of its
/// files, hides another with a whiteout and adds one.
fn make_layers(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (base, top) = (dir.join("base.tar"), dir.join("top.tar"));
    layer_tar(
        &base,
        &[
            ("etc", None),
            ("etc/base.txt", Some(b"from the base layer")),
            ("etc/shadowed.txt", Some(b"base version")),
            ("gone.txt", Some(b"hidden by a whiteout above")),
        ],
    );
    layer_tar(
        &top,
        &[
            ("etc", None),
            ("etc/shadowed.txt", Some(b"top version")),
            (".wh.gone.txt", Some(b"")),
            ("top.txt", Some(b"from the top layer")),
        ],
    );
    (base, top)
}

/// Imports a tarball with `vol layer import`; returns its JSON line.
fn import(d: &Daemon, path: &Path) -> serde_json::Value {
    let out = ok(
        d,
        &[
            "--output",
            "json",
            "layer",
            "import",
            path.to_str().unwrap(),
        ],
    );
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one layer per tarball: {out}");
    json(lines[0])
}

/// The filesystem type of the topmost mount at `path`.
fn fs_type_at(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(p) == path))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_string)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What every publication of the two layers shows.
fn assert_layers_visible(target: &Path) {
    assert_eq!(read(&target.join("etc/base.txt")), "from the base layer");
    assert_eq!(read(&target.join("etc/shadowed.txt")), "top version");
    assert_eq!(read(&target.join("top.txt")), "from the top layer");
    assert!(
        !target.join("gone.txt").exists(),
        "the whiteout hides gone.txt"
    );
    let mut names: Vec<_> = std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        !names
            .iter()
            .any(|n| n == "gone.txt" || n.starts_with(".wh.")),
        "{names:?}"
    );
}

async fn create_image(
    c: &mut Clients,
    name: &str,
    params: &[(&str, &str)],
) -> Result<csi::Volume, tonic::Status> {
    Ok(c.controller
        .create_volume(stowage_tests::create_req(name, 64 * MIB, params))
        .await?
        .into_inner()
        .volume
        .expect("volume"))
}

#[tokio::test]
async fn image_volumes_overlay_imported_layers_with_a_kept_writable_layer() {
    let mut daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let (base_tar, top_tar) = make_layers(&daemon.root().join("tarballs"));

    // Import and list.
    let base = import(&daemon, &base_tar);
    let top = import(&daemon, &top_tar);
    let base_key = base["key"].as_str().unwrap().to_string();
    let top_key = top["key"].as_str().unwrap().to_string();
    assert_eq!(base_key.len(), 64);
    assert_eq!(base["entries"], 4);
    assert!(base["diff_id"].as_str().unwrap().starts_with("sha256:"));
    let again = import(&daemon, &base_tar);
    assert_eq!(again["key"], base["key"], "the same tar is one layer");
    let mut listed: Vec<_> = ok(&daemon, &["layer", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut want = vec![base_key.clone(), top_key.clone()];
    want.sort();
    assert_eq!(listed, want);
    let table = ok(&daemon, &["layer", "ls"]);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.contains(&base_key) && table.contains("ENTRIES"),
        "{table}"
    );
    let as_json: Vec<_> = ok(&daemon, &["--output", "json", "layer", "ls"])
        .lines()
        .map(json)
        .collect();
    assert_eq!(as_json.len(), 2);
    assert!(
        as_json
            .iter()
            .all(|l| l["size_bytes"].as_u64().unwrap() > 0)
    );
    let err = fails(&daemon, &["layer", "rm", &"0".repeat(64)], 3);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&daemon, &["layer", "import", "/nonexistent/layer.tar"], 3);
    assert!(err.contains("/nonexistent/layer.tar"), "{err}");

    // Layers by key (with its prefix) and by diff_id; bottom first.
    let layers = format!("blake3:{base_key},{}", top["diff_id"].as_str().unwrap());
    let params = [("kind", "image"), ("layers", layers.as_str())];
    let v = create_image(&mut c, "img", &params)
        .await
        .expect("CreateVolume");
    assert_eq!(
        v.volume_context.get("layers"),
        Some(&format!("{base_key},{top_key}")),
        "references resolved to layer keys"
    );
    assert_eq!(
        v.volume_context.get("overlay").map(String::as_str),
        Some("kernel")
    );
    let id = v.volume_id;
    let again = create_image(&mut c, "img", &params)
        .await
        .expect("idempotent");
    assert_eq!(again.volume_id, id);
    let missing = format!("{base_key},{}", "f".repeat(64));
    let err = create_image(&mut c, "bad", &[("kind", "image"), ("layers", &missing)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not in the layer store"), "{err:?}");
    let err = create_image(
        &mut c,
        "bad",
        &[("kind", "image"), ("layers", &base_key), ("fsType", "ext4")],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Publish: the layers, a whiteout, and a writable layer.
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("pods/a/img");
    c.stage_and_publish(&id, &staging, &target).await;
    assert_eq!(fs_type_at(&target).as_deref(), Some("overlay"));
    assert_layers_visible(&target);
    std::fs::write(target.join("written.txt"), "written in the volume").unwrap();
    std::fs::write(target.join("etc/base.txt"), "changed (copied up)").unwrap();
    std::fs::remove_file(target.join("top.txt")).unwrap();
    let store = daemon.layer_store().join("layers");
    assert_eq!(
        read(&store.join(&base_key).join("etc/base.txt")),
        "from the base layer",
        "the lower layer is untouched"
    );

    // A second, read-only target has a fresh writable layer of its own.
    let ro_target = daemon.root().join("pods/b/img");
    c.publish(&id, &staging, &ro_target, true)
        .await
        .expect("read-only publish");
    assert_layers_visible(&ro_target);
    assert!(!ro_target.join("written.txt").exists());
    let err = std::fs::write(ro_target.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    c.unpublish(&id, &ro_target).await.expect("unpublish ro");
    assert!(!ro_target.exists());

    // A persistent volume keeps a target's writable layer across unpublish.
    c.unpublish(&id, &target).await.expect("unpublish");
    assert!(!target.exists(), "target removed");
    c.publish(&id, &staging, &target, false)
        .await
        .expect("republish");
    assert_eq!(read(&target.join("written.txt")), "written in the volume");
    assert_eq!(read(&target.join("etc/base.txt")), "changed (copied up)");
    assert!(!target.join("top.txt").exists(), "the deletion is kept");

    // A lost overlay (as after a reboot) is mounted again when the daemon starts.
    daemon.kill9();
    nix::mount::umount2(&target, nix::mount::MntFlags::empty()).expect("umount target");
    assert_eq!(fs_type_at(&target), None);
    daemon.restart();
    let mut c = daemon.clients().await;
    assert_eq!(fs_type_at(&target).as_deref(), Some("overlay"));
    assert_eq!(read(&target.join("written.txt")), "written in the volume");
    assert!(daemon.log().contains("restored"), "{}", daemon.log());

    // A layer in use cannot be removed.
    let err = fails(&daemon, &["layer", "rm", &base_key], 1);
    assert!(err.contains("is used by volume img"), "{err}");
    let err = fails(
        &daemon,
        &["layer", "rm", top["diff_id"].as_str().unwrap()],
        1,
    );
    assert!(err.contains("is used by volume img"), "{err}");

    // An inline ephemeral image volume (its layer named by its blob digest): its
    // writes go with it at unpublish.
    let eph_target = daemon.root().join("pods/c/inline");
    let blob = base["blobs"][0].as_str().unwrap().to_string();
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "c"),
        ("kind", "image"),
        ("layers", blob.as_str()),
        ("size", "32MiB"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let publish_inline = csi::NodePublishVolumeRequest {
        volume_id: "csi-inline-image".to_string(),
        target_path: eph_target.display().to_string(),
        volume_capability: Some(mount_cap("")),
        volume_context: context,
        ..Default::default()
    };
    c.node
        .node_publish_volume(publish_inline.clone())
        .await
        .expect("NodePublish of an inline image volume");
    assert_eq!(fs_type_at(&eph_target).as_deref(), Some("overlay"));
    assert_eq!(read(&eph_target.join("etc/shadowed.txt")), "base version");
    assert_eq!(
        read(&eph_target.join("gone.txt")),
        "hidden by a whiteout above"
    );
    std::fs::write(eph_target.join("scratch.txt"), "inline").unwrap();
    assert_eq!(c.list_ids().await.len(), 2);
    let err = fails(&daemon, &["layer", "rm", &base_key], 1);
    assert!(err.contains("ephemeral-csi-inline-image"), "{err}");
    c.unpublish("csi-inline-image", &eph_target)
        .await
        .expect("NodeUnpublish of the inline volume");
    assert!(!eph_target.exists());
    assert_eq!(
        c.list_ids().await,
        vec![id.clone()],
        "the inline volume is gone"
    );
    c.node
        .node_publish_volume(publish_inline)
        .await
        .expect("inline again");
    assert!(
        !eph_target.join("scratch.txt").exists(),
        "a new inline volume starts empty"
    );
    c.unpublish("csi-inline-image", &eph_target)
        .await
        .expect("NodeUnpublish again");

    // Once the volume is deleted, its layers can be removed.
    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.expect("DeleteVolume");
    assert_eq!(
        daemon.volume_entries().len(),
        0,
        "no storage left in the pool"
    );
    let out = ok(&daemon, &["layer", "rm", &base_key]);
    assert_eq!(out, format!("removed layer {base_key}\n"));
    assert_eq!(ok(&daemon, &["layer", "ls", "-q"]), format!("{top_key}\n"));
    ok(&daemon, &["layer", "rm", &format!("blake3:{top_key}")]);
    assert_eq!(ok(&daemon, &["layer", "ls", "-q"]), "");
    assert!(!store.join(&base_key).exists());
    let pool = daemon.state_dir().join("pool");
    let stray: Vec<_> = mounts_under(daemon.root())
        .into_iter()
        .filter(|m| *m != pool)
        .collect();
    assert!(stray.is_empty(), "mounts left: {stray:?}");
}

#[tokio::test]
async fn fuse_image_volume_is_served_by_stowage_overlay_beyond_the_daemon() {
    let mut daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let (base_tar, top_tar) = make_layers(&daemon.root().join("tarballs"));
    let base_key = import(&daemon, &base_tar)["key"]
        .as_str()
        .unwrap()
        .to_string();
    let top_key = import(&daemon, &top_tar)["key"]
        .as_str()
        .unwrap()
        .to_string();
    let layers = format!("{base_key},{top_key}");
    let v = create_image(
        &mut c,
        "fused",
        &[("kind", "image"), ("layers", &layers), ("overlay", "fuse")],
    )
    .await
    .expect("CreateVolume");
    assert_eq!(
        v.volume_context.get("overlay").map(String::as_str),
        Some("fuse")
    );
    let id = v.volume_id;
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("pods/f/img");
    c.stage_and_publish(&id, &staging, &target).await;
    assert_eq!(fs_type_at(&target).as_deref(), Some("fuse.stowage-overlay"));
    // Named after its writable layer, so that unpublish knows it from any other.
    let source = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(p) == target))
        .and_then(|l| {
            l.split(" - ")
                .nth(1)
                .and_then(|r| r.split(' ').nth(1))
                .map(str::to_string)
        })
        .unwrap();
    assert!(
        source.starts_with(&format!("stowage-overlay:{id}/pub-")),
        "{source}"
    );
    assert_layers_visible(&target);
    std::fs::write(target.join("written.txt"), "through FUSE").unwrap();

    // The FUSE server is a process of its own: the daemon's restart leaves it serving.
    daemon.restart();
    let mut c = daemon.clients().await;
    assert_eq!(read(&target.join("written.txt")), "through FUSE");

    // Read-only publication: the mount itself is read-only.
    let ro_target = daemon.root().join("pods/g/img");
    c.publish(&id, &staging, &ro_target, true)
        .await
        .expect("read-only publish");
    assert_layers_visible(&ro_target);
    let err = std::fs::write(ro_target.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    c.unpublish(&id, &ro_target).await.expect("unpublish ro");

    // A publication whose FUSE server died (ENOTCONN) is still recognised and undone.
    let servers = || -> std::collections::BTreeSet<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid: &u32| {
                std::fs::read(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with(b"stowage-overlay"))
            })
            .collect()
    };
    let before = servers();
    let dead_target = daemon.root().join("pods/h/img");
    c.publish(&id, &staging, &dead_target, false)
        .await
        .expect("publish");
    let new: Vec<u32> = servers().difference(&before).copied().collect();
    assert_eq!(new.len(), 1, "one server for the new publication: {new:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let dead = (0..100).any(|_| {
        let gone = std::fs::metadata(&dead_target)
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        gone
    });
    assert!(dead, "the publication did not become a dead FUSE mount");
    c.unpublish(&id, &dead_target)
        .await
        .expect("unpublish of a dead FUSE mount");
    assert_eq!(fs_type_at(&dead_target), None);
    assert!(!dead_target.exists());

    c.unpublish(&id, &target).await.expect("unpublish");
    assert_eq!(fs_type_at(&target), None);
    c.publish(&id, &staging, &target, false)
        .await
        .expect("republish");
    assert_eq!(read(&target.join("written.txt")), "through FUSE");
    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.expect("DeleteVolume");
    ok(&daemon, &["layer", "rm", &base_key]);
    ok(&daemon, &["layer", "rm", &top_key]);
    let pool = daemon.state_dir().join("pool");
    let stray: Vec<_> = mounts_under(daemon.root())
        .into_iter()
        .filter(|m| *m != pool)
        .collect();
    assert!(stray.is_empty(), "mounts left: {stray:?}");
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Writes `bytes` as a blob of the OCI layout at `dir`; returns its descriptor fields.
fn oci_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256(bytes);
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::write(dir.join("blobs/sha256").join(hex), bytes).unwrap();
    (digest, bytes.len())
}

/// An OCI image layout at `dir` whose one image has the layer tarballs `tars`, bottom
/// first.
fn oci_layout(dir: &Path, tars: &[&[u8]]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": tars.iter().map(|t| sha256(t)).collect::<Vec<_>>(),
        },
    });
    let (config_digest, config_size) = oci_blob(dir, &serde_json::to_vec(&config).unwrap());
    let layers: Vec<_> = tars
        .iter()
        .map(|t| {
            let (digest, size) = oci_blob(dir, t);
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": size,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    let (m_digest, m_size) = oci_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m_digest,
            "size": m_size,
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test]
async fn layers_stream_in_chunks_and_oci_layouts_import_on_the_node() {
    let daemon = Daemon::start("4GiB", &[]);
    let tarballs = daemon.root().join("tarballs");
    let (base_tar, top_tar) = make_layers(&tarballs);

    // A layer larger than many stream chunks arrives whole.
    let big: Vec<u8> = (0..(5u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let big_tar = tarballs.join("big.tar");
    layer_tar(&big_tar, &[("data", None), ("data/big.bin", Some(&big))]);
    let layer = import(&daemon, &big_tar);
    let key = layer["key"].as_str().unwrap();
    let store = daemon.layer_store().join("layers");
    assert!(
        std::fs::read(store.join(key).join("data/big.bin")).unwrap() == big,
        "the streamed layer holds the file byte for byte"
    );
    assert_eq!(
        layer["diff_id"].as_str().unwrap(),
        sha256(&std::fs::read(&big_tar).unwrap())
    );

    // Not a tarball: refused, nothing left behind.
    let junk = tarballs.join("junk.tar");
    std::fs::write(&junk, vec![0x5a; 3000]).unwrap();
    let err = fails(&daemon, &["layer", "import", junk.to_str().unwrap()], 2);
    assert!(err.contains("layer"), "{err}");
    assert_eq!(ok(&daemon, &["layer", "ls", "-q"]), format!("{key}\n"));
    let leftovers: Vec<_> = std::fs::read_dir(daemon.layer_store())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An OCI image layout: every layer, bottom first; the same tars are the same layers.
    let base_bytes = std::fs::read(&base_tar).unwrap();
    let top_bytes = std::fs::read(&top_tar).unwrap();
    let layout = daemon.root().join("oci");
    oci_layout(&layout, &[&base_bytes, &top_bytes]);
    let out = ok(
        &daemon,
        &[
            "--output",
            "json",
            "layer",
            "import",
            layout.to_str().unwrap(),
        ],
    );
    let imported: Vec<_> = out.lines().map(json).collect();
    assert_eq!(imported.len(), 2, "{out}");
    assert_eq!(imported[0]["diff_id"], sha256(&base_bytes).as_str());
    assert_eq!(imported[1]["diff_id"], sha256(&top_bytes).as_str());
    let streamed = import(&daemon, &top_tar);
    assert_eq!(streamed["key"], imported[1]["key"], "deduplicated");
    assert_eq!(ok(&daemon, &["layer", "ls", "-q"]).lines().count(), 3);
}

/// Layer imports count against the layer store's quota (a subvolume of the pool), not
/// the host's root filesystem; a tiny tar claiming a huge sparse file is refused.
#[tokio::test]
async fn layer_imports_are_bounded_by_the_stores_quota_and_refuse_sparse_bombs() {
    let daemon = Daemon::start("4GiB", &["--layer-store-size", "32MiB"]);
    let store = daemon.layer_store();
    let show = std::process::Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "the layer store is a subvolume of the pool"
    );

    let tarballs = daemon.root().join("tarballs");
    std::fs::create_dir_all(&tarballs).unwrap();
    let big: Vec<u8> = (0..(48u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_tar = tarballs.join("big.tar");
    layer_tar(&big_tar, &[("data", None), ("data/big.bin", Some(&big))]);
    let err = fails(&daemon, &["layer", "import", big_tar.to_str().unwrap()], 1);
    assert!(err.to_lowercase().contains("quota"), "{err}");

    // 10 GiB declared, no data: a GNU sparse entry of a few hundred bytes.
    let bomb = tarballs.join("bomb.tar");
    std::fs::write(&bomb, sparse_bomb(10 << 30)).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 4096);
    let err = fails(&daemon, &["layer", "import", bomb.to_str().unwrap()], 2);
    assert!(err.contains("sparse"), "{err}");

    assert_eq!(ok(&daemon, &["layer", "ls", "-q"]), "");
    let leftovers: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A GNU tar holding one sparse file of `size` bytes with no data at all.
fn sparse_bomb(size: u64) -> Vec<u8> {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    let octal = |len: usize, v: u64| format!("{v:0w$o}\0", w = len - 1).into_bytes();
    put(&mut h, 0, b"bomb");
    put(&mut h, 100, &octal(8, 0o644));
    put(&mut h, 108, &octal(8, 0));
    put(&mut h, 116, &octal(8, 0));
    put(&mut h, 124, &octal(12, 0));
    put(&mut h, 136, &octal(12, 0));
    h[156] = b'S';
    put(&mut h, 257, b"ustar  \0");
    // One sparse chunk: offset `size`, length 0; then the real size.
    put(&mut h, 386, &octal(12, size));
    put(&mut h, 398, &octal(12, 0));
    put(&mut h, 483, &octal(12, size));
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, &octal(8, u64::from(sum)));
    let mut out = h.to_vec();
    out.extend(std::iter::repeat_n(0, 1024));
    out
}
