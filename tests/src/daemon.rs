//! A real `stowaged` on a temporary state directory, stopped and cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stowage_proto::csi::v1::controller_client::ControllerClient;
use stowage_proto::csi::v1::identity_client::IdentityClient;
use stowage_proto::csi::v1::node_client::NodeClient;

use crate::*;

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

    /// The peer service address a daemon started with `--peer-listen` wrote.
    pub fn peer_addr(&self) -> String {
        let path = self.state_dir().join("peer.addr");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
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
