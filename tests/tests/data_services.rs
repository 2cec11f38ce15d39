//! Data services on a real daemon, checked by the data itself: snapshots restore the
//! content they were taken of, clones are independent of their source, expansion is
//! seen by statvfs, raw block volumes hold what is written to them, compression
//! reaches the extents on disk, group snapshots restore every member, and an inline
//! ephemeral volume leaves nothing behind.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::group_controller_client::GroupControllerClient;
use stowage_tests::{
    Daemon, block_cap, fs_total_bytes, mount_cap, mounts_under, snapshot_source, volume_source,
    write_synced,
};
use tonic::Code;

const MIB: i64 = 1 << 20;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Snapshot of a published volume, overwrite, restore: the restore holds the old
/// content, the source the new. With `restore_bytes` larger than the source, the
/// restored filesystem is as large as the new volume once staged.
async fn snapshot_then_restore(params: &[(&str, &str)], bytes: i64, restore_bytes: i64) {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("s-src"), daemon.root().join("t-src"));
    let src = c.create("src", bytes, params).await;
    c.stage_and_publish(&src, &staging, &target).await;
    let file = target.join("content.txt");
    write_synced(&file, b"old content, before the snapshot");

    let snap = c.snapshot("snap", &src).await;
    assert!(snap.ready_to_use, "{snap:?}");
    assert_eq!(snap.source_volume_id, src);
    assert_eq!(snap.size_bytes, bytes);
    write_synced(&file, b"NEW content, after the snapshot");

    let restored = c
        .create_from(
            "restored",
            restore_bytes,
            params,
            snapshot_source(&snap.snapshot_id),
        )
        .await
        .expect("CreateVolume from the snapshot");
    assert_eq!(restored.capacity_bytes, restore_bytes);
    assert_eq!(
        restored.content_source,
        Some(snapshot_source(&snap.snapshot_id))
    );
    let (r_staging, r_target) = (daemon.root().join("s-rest"), daemon.root().join("t-rest"));
    c.stage_and_publish(&restored.volume_id, &r_staging, &r_target)
        .await;
    assert_eq!(
        read(&r_target.join("content.txt")),
        b"old content, before the snapshot"
    );
    assert_eq!(read(&file), b"NEW content, after the snapshot");

    // The restore is a volume of its own: writing to it leaves the source alone.
    write_synced(&r_target.join("content.txt"), b"written to the restore");
    assert_eq!(read(&file), b"NEW content, after the snapshot");

    let usage = c.byte_usage(&restored.volume_id, &r_target).await;
    if params.contains(&("kind", "dir")) {
        assert_eq!(usage.total, restore_bytes, "{usage:?}");
    } else {
        // statvfs shows a filesystem's size less its own overhead (log, inode tables).
        let (src_total, rest_total) = (fs_total_bytes(&target), fs_total_bytes(&r_target));
        eprintln!("statvfs total: source {src_total}, restored {rest_total}");
        assert!(src_total <= bytes as u64, "{src_total}");
        assert!(rest_total <= restore_bytes as u64, "{rest_total}");
        let growth = (restore_bytes - bytes) as u64;
        assert!(
            rest_total >= src_total + growth / 10 * 9,
            "restored into {restore_bytes} bytes from {bytes}, the filesystem spans \
             {rest_total} bytes (the source's {src_total})"
        );
        assert_eq!(usage.total as u64, rest_total, "{usage:?}");
    }

    c.unpublish_and_unstage(&restored.volume_id, &r_staging, &r_target)
        .await;
    c.unpublish_and_unstage(&src, &staging, &target).await;
    c.delete(&restored.volume_id).await.unwrap();
    c.delete(&src).await.unwrap();
    c.delete_snapshot(&snap.snapshot_id).await.unwrap();
    assert!(c.list_ids().await.is_empty());
    assert!(c.list_snapshot_ids("").await.is_empty());
    assert!(daemon.volume_loops().is_empty());
}

#[tokio::test]
async fn dir_snapshot_restores_old_content_into_a_larger_volume() {
    snapshot_then_restore(&[("kind", "dir")], 32 * MIB, 64 * MIB).await;
}

#[tokio::test]
async fn loop_ext4_snapshot_restores_old_content_and_grows_to_the_larger_volume() {
    snapshot_then_restore(
        &[("kind", "loop"), ("fsType", "ext4")],
        256 * MIB,
        512 * MIB,
    )
    .await;
}

/// The source stays mounted while its restore is mounted: two xfs filesystems with the
/// same UUID on one host.
#[tokio::test]
async fn loop_xfs_snapshot_restores_old_content_while_the_source_is_mounted() {
    snapshot_then_restore(&[("kind", "loop"), ("fsType", "xfs")], 320 * MIB, 320 * MIB).await;
}

/// A snapshot outlives the volume it was taken of: listed, gettable and restorable
/// after the source is deleted.
async fn snapshot_outlives_its_source(params: &[(&str, &str)], bytes: i64) {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("s-src"), daemon.root().join("t-src"));
    let src = c.create("src", bytes, params).await;
    c.stage_and_publish(&src, &staging, &target).await;
    write_synced(&target.join("keep.txt"), b"kept by the snapshot");
    let snap = c.snapshot("snap", &src).await;
    c.unpublish_and_unstage(&src, &staging, &target).await;
    c.delete(&src).await.expect("delete the source");
    assert!(c.list_ids().await.is_empty());

    let got = c
        .get_snapshot(&snap.snapshot_id)
        .await
        .expect("GetSnapshot after its source is gone");
    assert_eq!(got.source_volume_id, src);
    assert!(got.ready_to_use);
    assert_eq!(
        c.list_snapshot_ids("").await,
        vec![snap.snapshot_id.clone()]
    );
    assert_eq!(
        c.list_snapshot_ids(&src).await,
        vec![snap.snapshot_id.clone()]
    );

    let restored = c
        .create_from(
            "restored",
            bytes,
            params,
            snapshot_source(&snap.snapshot_id),
        )
        .await
        .expect("restore from an orphaned snapshot");
    let (r_staging, r_target) = (daemon.root().join("s-rest"), daemon.root().join("t-rest"));
    c.stage_and_publish(&restored.volume_id, &r_staging, &r_target)
        .await;
    assert_eq!(read(&r_target.join("keep.txt")), b"kept by the snapshot");
    c.unpublish_and_unstage(&restored.volume_id, &r_staging, &r_target)
        .await;
    c.delete(&restored.volume_id).await.unwrap();

    c.delete_snapshot(&snap.snapshot_id).await.unwrap();
    c.delete_snapshot(&snap.snapshot_id)
        .await
        .expect("deleting a deleted snapshot is a no-op");
    let err = c.get_snapshot(&snap.snapshot_id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(c.list_snapshot_ids("").await.is_empty());
    assert!(c.list_ids().await.is_empty());
}

#[tokio::test]
async fn dir_snapshot_outlives_its_source_volume() {
    snapshot_outlives_its_source(&[("kind", "dir")], 32 * MIB).await;
}

#[tokio::test]
async fn loop_ext4_snapshot_outlives_its_source_volume() {
    snapshot_outlives_its_source(&[("kind", "loop"), ("fsType", "ext4")], 128 * MIB).await;
}

/// A clone starts with its source's content, then each side's writes stay its own.
async fn clone_is_independent(params: &[(&str, &str)], bytes: i64) {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("s-src"), daemon.root().join("t-src"));
    let src = c.create("src", bytes, params).await;
    c.stage_and_publish(&src, &staging, &target).await;
    write_synced(&target.join("shared.txt"), b"from the source");

    let clone = c
        .create_from("clone", bytes, params, volume_source(&src))
        .await
        .expect("CreateVolume from a volume");
    assert_eq!(clone.content_source, Some(volume_source(&src)));
    let (k_staging, k_target) = (daemon.root().join("s-clone"), daemon.root().join("t-clone"));
    c.stage_and_publish(&clone.volume_id, &k_staging, &k_target)
        .await;
    assert_eq!(read(&k_target.join("shared.txt")), b"from the source");

    write_synced(&k_target.join("shared.txt"), b"changed in the clone");
    write_synced(&k_target.join("clone-only.txt"), b"clone");
    assert_eq!(read(&target.join("shared.txt")), b"from the source");
    assert!(!target.join("clone-only.txt").exists());

    write_synced(&target.join("shared.txt"), b"changed in the source");
    write_synced(&target.join("source-only.txt"), b"source");
    assert_eq!(read(&k_target.join("shared.txt")), b"changed in the clone");
    assert!(!k_target.join("source-only.txt").exists());

    // Independent on disk too, not only in the page cache: read both after a restage.
    c.unpublish_and_unstage(&clone.volume_id, &k_staging, &k_target)
        .await;
    c.unpublish_and_unstage(&src, &staging, &target).await;
    c.stage_and_publish(&clone.volume_id, &k_staging, &k_target)
        .await;
    c.stage_and_publish(&src, &staging, &target).await;
    assert_eq!(read(&k_target.join("shared.txt")), b"changed in the clone");
    assert_eq!(read(&target.join("shared.txt")), b"changed in the source");

    // The source can go first: the clone does not depend on it.
    c.unpublish_and_unstage(&src, &staging, &target).await;
    c.delete(&src).await.expect("delete the source of a clone");
    assert_eq!(read(&k_target.join("clone-only.txt")), b"clone");
    c.unpublish_and_unstage(&clone.volume_id, &k_staging, &k_target)
        .await;
    c.delete(&clone.volume_id).await.unwrap();
    assert!(c.list_ids().await.is_empty());
    assert!(daemon.volume_loops().is_empty());
}

#[tokio::test]
async fn dir_clone_and_source_are_independent() {
    clone_is_independent(&[("kind", "dir")], 32 * MIB).await;
}

#[tokio::test]
async fn loop_ext4_clone_and_source_are_independent() {
    clone_is_independent(&[("kind", "loop"), ("fsType", "ext4")], 128 * MIB).await;
}

async fn controller_expand(c: &mut stowage_tests::Clients, id: &str, bytes: i64) -> (i64, bool) {
    let r = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap("")),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    (r.capacity_bytes, r.node_expansion_required)
}

async fn node_expand(
    c: &mut stowage_tests::Clients,
    id: &str,
    path: &Path,
    bytes: i64,
) -> Result<i64, tonic::Status> {
    c.node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.to_string(),
            volume_path: path.display().to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap("")),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().capacity_bytes)
}

#[tokio::test]
async fn xfs_volume_grows_online_and_df_sees_it() {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("staging"), daemon.root().join("target"));
    let id = c
        .create("grow", 512 * MIB, &[("kind", "loop"), ("fsType", "xfs")])
        .await;
    c.stage_and_publish(&id, &staging, &target).await;
    write_synced(&target.join("before.txt"), b"written before growing");
    let before = fs_total_bytes(&target);

    assert_eq!(
        controller_expand(&mut c, &id, 1024 * MIB).await,
        (1024 * MIB, true)
    );
    assert_eq!(
        node_expand(&mut c, &id, &target, 1024 * MIB)
            .await
            .expect("NodeExpandVolume"),
        1024 * MIB
    );
    let after = fs_total_bytes(&target);
    eprintln!("statvfs total: {before} before, {after} after");
    assert!(
        after > before + (400 << 20),
        "xfs grew from {before} to only {after} bytes"
    );
    assert!(after <= 1 << 30, "{after}");
    assert_eq!(c.byte_usage(&id, &target).await.total as u64, after);
    // Space past the old size is really usable.
    let big = vec![0x33u8; 600 << 20];
    write_synced(&target.join("big.bin"), &big);
    drop(big);
    assert_eq!(read(&target.join("before.txt")), b"written before growing");
    // Nothing left to do on the node.
    assert_eq!(
        controller_expand(&mut c, &id, 1024 * MIB).await,
        (1024 * MIB, false)
    );

    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.unwrap();
    assert!(daemon.volume_loops().is_empty());
}

#[tokio::test]
async fn dir_volume_expansion_raises_the_quota() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("staging"), daemon.root().join("target"));
    let id = c.create("grow", 16 * MIB, &[("kind", "dir")]).await;
    c.stage_and_publish(&id, &staging, &target).await;
    write_synced(&target.join("first.bin"), &vec![1u8; 12 << 20]);

    // 12 MiB more does not fit in 16 MiB.
    let mut f = std::fs::File::create(target.join("second.bin")).unwrap();
    let err = f
        .write_all(&vec![2u8; 12 << 20])
        .and_then(|_| f.sync_all())
        .expect_err("24 MiB in a 16 MiB volume");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT) | Some(libc::ENOSPC)),
        "{err}"
    );
    drop(f);
    std::fs::remove_file(target.join("second.bin")).unwrap();
    nix::unistd::sync();

    assert_eq!(
        controller_expand(&mut c, &id, 64 * MIB).await,
        (64 * MIB, false),
        "a directory volume needs no node expansion"
    );
    write_synced(&target.join("second.bin"), &vec![2u8; 24 << 20]);
    nix::unistd::sync();
    let usage = c.byte_usage(&id, &target).await;
    assert_eq!(usage.total, 64 * MIB, "{usage:?}");
    assert!(usage.used >= 36 * MIB, "{usage:?}");
    assert_eq!(read(&target.join("first.bin")), vec![1u8; 12 << 20]);

    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.unwrap();
}

/// ext4 grows online only with CAP_SYS_RESOURCE; without it NodeExpand says so
/// (FAILED_PRECONDITION) and the filesystem grows offline at the next stage. Either
/// way, after a restage df shows the new size.
#[tokio::test]
async fn ext4_volume_grows_online_or_at_next_stage() {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("staging"), daemon.root().join("target"));
    let id = c
        .create("grow", 256 * MIB, &[("kind", "loop"), ("fsType", "ext4")])
        .await;
    c.stage_and_publish(&id, &staging, &target).await;
    write_synced(&target.join("before.txt"), b"written before growing");
    let before = fs_total_bytes(&target);
    assert!(before <= (256 << 20), "{before}");

    assert_eq!(
        controller_expand(&mut c, &id, 512 * MIB).await,
        (512 * MIB, true)
    );
    match node_expand(&mut c, &id, &target, 512 * MIB).await {
        Ok(capacity) => {
            eprintln!("NodeExpandVolume grew ext4 online (the kernel allowed it)");
            assert_eq!(capacity, 512 * MIB);
            let now = fs_total_bytes(&target);
            assert!(now > before + (200 << 20), "{before} -> {now}");
        }
        Err(status) => {
            eprintln!(
                "NodeExpandVolume refused online ext4 growth: {:?}: {}",
                status.code(),
                status.message()
            );
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("CAP_SYS_RESOURCE"),
                "{}",
                status.message()
            );
            assert_eq!(
                fs_total_bytes(&target),
                before,
                "a refused resize changes nothing"
            );
        }
    }

    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.stage_and_publish(&id, &staging, &target).await;
    let after = fs_total_bytes(&target);
    eprintln!("statvfs total: {before} before, {after} after restaging");
    assert!(
        after > before + (200 << 20) && after <= 512 << 20,
        "ext4 spans {after} bytes after restaging into a 512 MiB volume"
    );
    assert_eq!(read(&target.join("before.txt")), b"written before growing");
    assert_eq!(
        controller_expand(&mut c, &id, 512 * MIB).await,
        (512 * MIB, false),
        "the filesystem already spans the volume"
    );

    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.unwrap();
    assert!(daemon.volume_loops().is_empty());
}

/// A buffer of `len` bytes aligned for O_DIRECT (4 KiB), without unsafe.
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let skip = storage.as_ptr().align_offset(4096);
    &mut storage[skip..skip + len]
}

#[tokio::test]
async fn block_volume_holds_written_data_and_reports_its_size() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let mut req = stowage_tests::create_req("raw", 64 * MIB, &[("kind", "loop")]);
    req.volume_capabilities = vec![block_cap()];
    let id = c
        .controller
        .create_volume(req)
        .await
        .expect("CreateVolume for block access")
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = daemon.root().join("staging");
    let target = daemon.root().join("pods/raw/dev");
    c.stage_with(&id, &staging, block_cap())
        .await
        .expect("stage for block access");
    c.publish_with(&id, &staging, &target, false, block_cap())
        .await
        .expect("publish for block access");
    let meta = std::fs::metadata(&target).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_block_device(), "{meta:?}");

    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    const OFFSET: u64 = 8 << 20;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        f.seek(SeekFrom::Start(OFFSET)).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
    }
    {
        // A fresh open with O_DIRECT: the bytes come from the device, not a cache.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&target)
            .unwrap();
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 64 << 20, "device size");
        f.seek(SeekFrom::Start(OFFSET)).unwrap();
        let mut storage = Vec::new();
        let buf = aligned(&mut storage, pattern.len());
        f.read_exact(buf).unwrap();
        assert!(buf == &pattern[..], "pattern read back through the device");
    }
    // And it reached the volume's image in the pool.
    {
        let mut img = std::fs::File::open(daemon.volume_dir(&id).join("disk.img")).unwrap();
        img.seek(SeekFrom::Start(OFFSET)).unwrap();
        let mut back = vec![0u8; pattern.len()];
        img.read_exact(&mut back).unwrap();
        assert!(back == pattern, "pattern in the image file");
    }
    let usage = c.byte_usage(&id, &target).await;
    assert_eq!(usage.total, 64 * MIB, "{usage:?}");

    c.unpublish(&id, &target).await.expect("unpublish");
    assert!(!target.exists(), "unpublish removes the target file");
    assert_eq!(daemon.volume_loops().len(), 1, "still staged");
    c.unstage(&id, &staging).await.expect("unstage");
    assert!(
        daemon.volume_loops().is_empty(),
        "unstage detaches the loop device"
    );
    c.delete(&id).await.unwrap();
    assert!(c.list_ids().await.is_empty());
}

fn btrfs_compression_property(path: &Path) -> String {
    let out = Command::new("btrfs")
        .args(["property", "get"])
        .arg(path)
        .arg("compression")
        .output()
        .expect("run btrfs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `filefrag -v` flags compressed extents "encoded".
fn has_encoded_extents(path: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .expect("run filefrag");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).contains("encoded")
}

async fn modify(
    c: &mut stowage_tests::Clients,
    id: &str,
    params: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    c.controller
        .controller_modify_volume(csi::ControllerModifyVolumeRequest {
            volume_id: id.to_string(),
            mutable_parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn zstd_compression_set_on_a_live_volume_compresses_new_data() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let (staging, target) = (daemon.root().join("staging"), daemon.root().join("target"));
    let id = c.create("squeeze", 256 * MIB, &[("kind", "dir")]).await;
    c.stage_and_publish(&id, &staging, &target).await;
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .copied()
        .cycle()
        .take(8 << 20)
        .collect();
    write_synced(&target.join("plain.txt"), &text);
    assert!(
        !has_encoded_extents(&target.join("plain.txt")),
        "data written before ModifyVolume is not compressed"
    );

    modify(&mut c, &id, &[("compression", "zstd")])
        .await
        .expect("ControllerModifyVolume compression=zstd");
    assert_eq!(btrfs_compression_property(&target), "compression=zstd");
    let file = target.join("squeezed.txt");
    write_synced(&file, &text);
    nix::unistd::sync();
    assert_eq!(btrfs_compression_property(&file), "compression=zstd");
    assert!(has_encoded_extents(&file), "compressed extents are encoded");
    assert_eq!(read(&file), text);
    // The qgroup counts bytes on disk: 8 MiB of text in far less.
    let usage = c.byte_usage(&id, &target).await;
    eprintln!("used {} bytes for 2 x 8 MiB (one compressed)", usage.used);
    assert!(
        usage.used < 12 * MIB,
        "8 MiB plain + 8 MiB compressed text use {} bytes",
        usage.used
    );

    for bad in [&[("compression", "gzip9")][..], &[("colour", "blue")][..]] {
        let err = modify(&mut c, &id, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
    }
    let loop_id = c.create("loop", 64 * MIB, &[("kind", "loop")]).await;
    let err = modify(&mut c, &loop_id, &[("compression", "zstd")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(btrfs_compression_property(&target), "compression=zstd");

    c.unpublish_and_unstage(&id, &staging, &target).await;
    c.delete(&id).await.unwrap();
    c.delete(&loop_id).await.unwrap();
}

#[tokio::test]
async fn group_snapshot_restores_every_member_and_its_deletion_takes_the_members() {
    let daemon = Daemon::start("8GiB", &[]);
    let mut c = daemon.clients().await;
    let mut group = GroupControllerClient::new(
        stowage_cli::client::connect(&daemon.socket())
            .await
            .expect("connect"),
    );
    let params = [("kind", "loop"), ("fsType", "ext4")];
    let mut members = Vec::new();
    for name in ["db", "log"] {
        let id = c.create(name, 128 * MIB, &params).await;
        let staging = daemon.root().join(format!("s-{name}"));
        let target = daemon.root().join(format!("t-{name}"));
        c.stage_and_publish(&id, &staging, &target).await;
        write_synced(&target.join("data.txt"), format!("{name} at t0").as_bytes());
        members.push((name, id, staging, target));
    }
    let sources: Vec<String> = members.iter().map(|m| m.1.clone()).collect();
    let g = group
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "grp".into(),
            source_volume_ids: sources.clone(),
            ..Default::default()
        })
        .await
        .expect("CreateVolumeGroupSnapshot")
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(g.ready_to_use);
    assert_eq!(g.snapshots.len(), 2);
    let got = group
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("GetVolumeGroupSnapshot")
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got.snapshots, g.snapshots);
    let mut listed = c.list_snapshot_ids("").await;
    listed.sort();
    let mut member_ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    member_ids.sort();
    assert_eq!(listed, member_ids, "members are listed as snapshots");
    for (name, _, _, target) in &members {
        write_synced(&target.join("data.txt"), format!("{name} at t1").as_bytes());
    }

    for (name, id, _, _) in &members {
        let snap = g
            .snapshots
            .iter()
            .find(|s| s.source_volume_id == *id)
            .unwrap_or_else(|| panic!("no member snapshot of {name}"));
        assert_eq!(snap.group_snapshot_id, g.group_snapshot_id);
        let restored = c
            .create_from(
                &format!("restored-{name}"),
                128 * MIB,
                &params,
                snapshot_source(&snap.snapshot_id),
            )
            .await
            .expect("restore a member snapshot");
        let staging = daemon.root().join(format!("s-rest-{name}"));
        let target = daemon.root().join(format!("t-rest-{name}"));
        c.stage_and_publish(&restored.volume_id, &staging, &target)
            .await;
        assert_eq!(
            read(&target.join("data.txt")),
            format!("{name} at t0").as_bytes()
        );
        c.unpublish_and_unstage(&restored.volume_id, &staging, &target)
            .await;
        c.delete(&restored.volume_id).await.unwrap();
    }

    let err = c
        .delete_snapshot(&g.snapshots[0].snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a member goes with its group: {err:?}"
    );
    group
        .delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("DeleteVolumeGroupSnapshot");
    for s in &g.snapshots {
        let err = c.get_snapshot(&s.snapshot_id).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let err = group
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(c.list_snapshot_ids("").await.is_empty());

    for (_, id, staging, target) in &members {
        c.unpublish_and_unstage(id, staging, target).await;
        c.delete(id).await.unwrap();
    }
    assert!(c.list_ids().await.is_empty());
    assert!(daemon.volume_loops().is_empty());
}

#[tokio::test]
async fn inline_ephemeral_volume_lives_from_publish_to_unpublish() {
    let daemon = Daemon::start("4GiB", &[]);
    let mut c = daemon.clients().await;
    let target = daemon.root().join("pods/web-0/volumes/scratch");
    let co_id = "csi-4f1c0ffee0d5";
    let context: HashMap<String, String> = [
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("kind", "loop"),
        ("size", "64MiB"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: co_id.to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_cap("")),
            volume_context: context,
            ..Default::default()
        })
        .await
        .expect("NodePublish of an inline volume");
    write_synced(&target.join("scratch.txt"), b"inline data");
    assert_eq!(read(&target.join("scratch.txt")), b"inline data");
    let total = fs_total_bytes(&target);
    assert!(total <= 64 << 20 && total > 48 << 20, "{total}");
    assert_eq!(c.list_ids().await.len(), 1);
    assert_eq!(daemon.volume_loops().len(), 1);

    c.unpublish(co_id, &target).await.expect("NodeUnpublish");
    assert!(!target.exists(), "target removed");
    assert!(
        c.list_ids().await.is_empty(),
        "the inline volume is deleted"
    );
    assert!(daemon.volume_loops().is_empty(), "no loop device left");
    let pool = daemon.state_dir().join("pool");
    let stray: Vec<_> = mounts_under(daemon.root())
        .into_iter()
        .filter(|m| *m != pool)
        .collect();
    assert!(stray.is_empty(), "mounts left: {stray:?}");
    assert_eq!(
        daemon.volume_entries().len(),
        0,
        "no storage left in the pool"
    );
}
