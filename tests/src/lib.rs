//! Shared harness of the integration tests: a real `stowaged` on a temporary state
//! directory, CSI clients over its socket, and cleanup that unmounts and detaches
//! everything under that directory even when a test fails.
//!
//! These tests need root (loop devices, mounts). Without root they fail loudly; they
//! never skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stowage_proto::csi::v1 as csi;
use stowage_proto::csi::v1::controller_client::ControllerClient;
use stowage_proto::csi::v1::identity_client::IdentityClient;
use stowage_proto::csi::v1::node_client::NodeClient;
use tonic::transport::Channel;

/// The node id every test daemon runs with.
pub const NODE_ID: &str = "it-node";

/// Panics unless running as root: privileged tests must run, never skip.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this privileged test needs root (loop devices, mounts); run `sudo hack/test.sh`. \
             It is not skipped on purpose: a skipped privileged test hides a broken driver."
        );
    }
}

/// The stowaged binary: $STOWAGE_BIN, or the workspace's target/debug/stowaged.
pub fn stowaged_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STOWAGE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/stowaged");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (hack/test.sh does)",
        p.display()
    );
    p
}

/// A running daemon on its own temporary state directory.
#[derive(Debug)]
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    prefix: Vec<String>,
}

impl Daemon {
    /// Starts stowaged with the embedded pool of `pool_size` (e.g. "4GiB") and `extra` args.
    pub fn start(pool_size: &str, extra: &[&str]) -> Daemon {
        Daemon::start_as(&[], NODE_ID, pool_size, extra)
    }

    /// Starts stowaged as node `node_id`, run through `prefix` (e.g. `nsenter
    /// --net=/run/netns/X --`, to put it in a network namespace).
    pub fn start_as(prefix: &[&str], node_id: &str, pool_size: &str, extra: &[&str]) -> Daemon {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("stowage-it-")
            .tempdir()
            .expect("temp dir");
        let mut args = vec![
            "--pool-size".to_string(),
            pool_size.to_string(),
            "--node-id".to_string(),
            node_id.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            dir,
            child: None,
            args,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// The temporary directory holding state, socket and test paths.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.root().join("csi.sock")
    }

    /// The image layer store (a subvolume of the embedded pool).
    pub fn layer_store(&self) -> PathBuf {
        self.state_dir().join("pool/layers-store")
    }

    /// The pool's volumes directory (directory volumes, and loop volumes of the
    /// `pool-image` layout).
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir().join("pool/volumes")
    }

    /// The host-image directory's volumes directory (loop volumes of the
    /// `host-image` layout, the default).
    pub fn host_images_dir(&self) -> PathBuf {
        self.state_dir().join("images/volumes")
    }

    /// Volume `id`'s directory, wherever its layout keeps it.
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        let host = self.host_images_dir().join(id);
        if host.exists() {
            host
        } else {
            self.volumes_dir().join(id)
        }
    }

    /// Loop devices on any volume's image (in the pool or on the host).
    pub fn volume_loops(&self) -> Vec<PathBuf> {
        let mut out = loops_under(&self.volumes_dir());
        out.extend(loops_under(&self.host_images_dir()));
        out
    }

    /// Names of the volume directories in the pool and in the host-image directory.
    pub fn volume_entries(&self) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        for dir in [self.volumes_dir(), self.host_images_dir()] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                out.extend(entries.flatten().map(|e| e.file_name()));
            }
        }
        out.sort();
        out
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("stowaged.log"))
            .expect("log file");
        let mut cmd = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(stowaged_bin());
                c
            }
            None => Command::new(stowaged_bin()),
        };
        let child = cmd
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn stowaged");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("stowaged exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "stowaged did not listen in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("stowaged.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (mounts and loop devices stay, as after a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the daemon again on the same state directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Restarts the daemon with `extra` arguments added to those it was started with.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn();
    }

    /// Adds `extra` to the arguments of the next start (a later flag wins).
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// Runs the daemon (stopped) with its arguments, expecting it to exit by itself
    /// within 30 s (a refusal to start); returns its exit status and output.
    pub fn run_to_exit(&self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "stop the daemon first");
        let mut child = Command::new(stowaged_bin())
            .arg("--endpoint")
            .arg(format!(
                "unix://{}",
                self.root().join("refused.sock").display()
            ))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stowaged");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("wait").is_some() {
                let out = child.wait_with_output().expect("output");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return (out.status, text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("stowaged kept running where it should have refused to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CSI clients connected to the daemon.
    pub async fn clients(&self) -> Clients {
        // The socket's file appears at bind(), a moment before listen(): a connect in
        // between is refused, so try again for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match stowage_cli::client::connect(&self.socket()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect to stowaged: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("connect to stowaged: {e:?}\n{}", self.log()),
            }
        };
        Clients {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        cleanup_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("--- stowaged log ---\n{}", self.log());
        }
    }
}

/// Unmounts every mount under `dir` (deepest first) and detaches every loop device
/// whose backing file is under `dir`, repeating while progress is made (a volume's
/// loop device keeps the pool mount busy until it is detached).
pub fn cleanup_under(dir: &Path) {
    for _ in 0..5 {
        let mut progress = false;
        let mut mounts = mounts_under(dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_ok() {
                progress = true;
            }
        }
        for dev in loops_under(dir) {
            if Command::new("losetup")
                .arg("-d")
                .arg(&dev)
                .status()
                .is_ok_and(|s| s.success())
            {
                progress = true;
            }
        }
        if mounts_under(dir).is_empty() && loops_under(dir).is_empty() {
            return;
        }
        if !progress {
            break;
        }
    }
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    for dev in loops_under(dir) {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    }
}

/// Mount points under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The mount options of the topmost mount at `path`.
pub fn mount_options(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4).is_some_and(|p| Path::new(p) == path))
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
}

/// Loop devices whose backing file is under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(back.trim_end()).starts_with(dir)
        {
            out.push(PathBuf::from("/dev").join(&name));
        }
    }
    out
}

/// CSI clients over one channel.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Identity.
    pub identity: IdentityClient<Channel>,
    /// Controller.
    pub controller: ControllerClient<Channel>,
    /// Node.
    pub node: NodeClient<Channel>,
}

/// A single-node-writer mount capability, optionally with an fs_type.
pub fn mount_cap(fs_type: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs_type.to_string(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            },
        )),
    }
}

/// A single-node-writer raw block capability.
pub fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
    }
}

/// A content source naming snapshot `id`.
pub fn snapshot_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.to_string(),
            },
        )),
    }
}

/// A content source naming volume `id` (a clone).
pub fn volume_source(id: &str) -> csi::VolumeContentSource {
    csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.to_string(),
            },
        )),
    }
}

/// Total bytes of the filesystem mounted at `path`, as df sees it (statvfs).
pub fn fs_total_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path)
        .unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()));
    st.blocks() as u64 * st.fragment_size() as u64
}

/// A CreateVolume request.
pub fn create_req(name: &str, bytes: i64, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap("")],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

impl Clients {
    /// Creates a volume and returns its id.
    pub async fn create(&mut self, name: &str, bytes: i64, params: &[(&str, &str)]) -> String {
        self.create_volume(name, bytes, params).await.volume_id
    }

    /// Creates a volume and returns it (its context included).
    pub async fn create_volume(
        &mut self,
        name: &str,
        bytes: i64,
        params: &[(&str, &str)],
    ) -> csi::Volume {
        self.controller
            .create_volume(create_req(name, bytes, params))
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume")
    }

    /// Creates a volume from `source` (a snapshot to restore or a volume to clone)
    /// and returns it.
    pub async fn create_from(
        &mut self,
        name: &str,
        bytes: i64,
        params: &[(&str, &str)],
        source: csi::VolumeContentSource,
    ) -> Result<csi::Volume, tonic::Status> {
        let mut req = create_req(name, bytes, params);
        req.volume_content_source = Some(source);
        Ok(self
            .controller
            .create_volume(req)
            .await?
            .into_inner()
            .volume
            .expect("volume"))
    }

    /// Publishes `id` to the daemon's node (ControllerPublish), then stages it at
    /// `staging`, both with a plain mount capability.
    pub async fn stage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.stage_with(id, staging, mount_cap("")).await
    }

    /// Publishes `id` to the daemon's node (ControllerPublish), then stages it at
    /// `staging`, both with capability `cap`.
    pub async fn stage_with(
        &mut self,
        id: &str,
        staging: &Path,
        cap: csi::VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: NODE_ID.to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await?;
        self.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Publishes `id` from `staging` at `target` with a plain mount capability.
    pub async fn publish(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.publish_with(id, staging, target, readonly, mount_cap(""))
            .await
    }

    /// Publishes `id` from `staging` at `target` with capability `cap`.
    pub async fn publish_with(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
        cap: csi::VolumeCapability,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Stages `id` at `staging` and publishes it read-write at `target`.
    pub async fn stage_and_publish(&mut self, id: &str, staging: &Path, target: &Path) {
        self.stage(id, staging).await.expect("stage");
        self.publish(id, staging, target, false)
            .await
            .expect("publish");
    }

    /// Unpublishes `id` from `target` and unstages it from `staging`.
    pub async fn unpublish_and_unstage(&mut self, id: &str, staging: &Path, target: &Path) {
        self.unpublish(id, target).await.expect("unpublish");
        self.unstage(id, staging).await.expect("unstage");
    }

    /// The byte usage NodeGetVolumeStats reports for `id` at `path`.
    pub async fn byte_usage(&mut self, id: &str, path: &Path) -> csi::VolumeUsage {
        self.node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.to_string(),
                volume_path: path.display().to_string(),
                staging_target_path: String::new(),
            })
            .await
            .expect("NodeGetVolumeStats")
            .into_inner()
            .usage
            .into_iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
            .expect("byte usage")
    }

    /// Takes snapshot `name` of volume `source`.
    pub async fn snapshot(&mut self, name: &str, source: &str) -> csi::Snapshot {
        self.controller
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.to_string(),
                name: name.to_string(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("snapshot")
    }

    /// GetSnapshot of `id`.
    pub async fn get_snapshot(&mut self, id: &str) -> Result<csi::Snapshot, tonic::Status> {
        Ok(self
            .controller
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: id.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .expect("snapshot"))
    }

    /// Ids of the snapshots ListSnapshots returns for `source_volume_id` ("" for all).
    pub async fn list_snapshot_ids(&mut self, source_volume_id: &str) -> Vec<String> {
        self.controller
            .list_snapshots(csi::ListSnapshotsRequest {
                source_volume_id: source_volume_id.to_string(),
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
            .collect()
    }

    /// Deletes snapshot `id`.
    pub async fn delete_snapshot(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Unpublishes `id` from `target`.
    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.to_string(),
                target_path: target.display().to_string(),
            })
            .await
            .map(|_| ())
    }

    /// Unstages `id` from `staging`, then unpublishes it from the node
    /// (ControllerUnpublish).
    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.to_string(),
                staging_target_path: staging.display().to_string(),
            })
            .await?;
        self.controller
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id.to_string(),
                node_id: NODE_ID.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Deletes `id`.
    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Ids of all volumes ListVolumes returns.
    pub async fn list_ids(&mut self) -> Vec<String> {
        self.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    }
}

/// sha256 of a file, by the system tool (fast even in a debug build).
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Writes `data` to `path` (replacing it) and syncs it to the device.
pub fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// `len` deterministic bytes from `seed` that do not compress or deduplicate.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hosts in network namespaces on a bridge.
pub mod cluster;

/// Running the `vol` command line against a test daemon.
pub mod vol {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    use crate::Daemon;

    /// The workspace's target/debug/vol.
    pub fn bin() -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vol");
        assert!(p.exists(), "{} missing: cargo build --bins", p.display());
        p
    }

    /// Runs `vol --socket <daemon's> ARGS`.
    pub fn run(d: &Daemon, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vol")
    }

    /// Runs `vol ARGS`, which must succeed; returns its stdout.
    pub fn ok(d: &Daemon, args: &[&str]) -> String {
        let out = run(d, args);
        assert!(
            out.status.success(),
            "vol {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `vol ARGS`, which must fail with exit status `code`, print nothing on
    /// stdout and one line starting `vol: ` on stderr; returns that line.
    pub fn fails(d: &Daemon, args: &[&str], code: i32) -> String {
        let out = run(d, args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "vol {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "nothing on stdout when failing");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("vol: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
        err
    }

    /// Parses one line of `--output json`.
    pub fn json(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Runs `vol --output json ARGS`, which must succeed; one value per output line.
    pub fn json_lines(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        ok(d, &full).lines().map(json).collect()
    }
}
