//! The `vol` command line: a client of the daemon's admin service. Kept in the library
//! so tests reach the parsing and formatting; `bin/vol.rs` only runs it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use tonic::Code;
use tonic::transport::Channel;
use volume_core::size::{format_size, parse_volume_size};

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: the operation failed.
pub const EXIT_ERROR: i32 = 1;
/// Exit status: the command line was wrong.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the named volume, snapshot or layer does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;

const EXIT_HELP: &str = "\
Exit status: 0 success, 1 error, 2 usage error, 3 volume, snapshot or layer not found.
Sizes take binary units: 512MiB, 10GiB (K/M/G/T are binary too).";

/// Manage Stowage volumes on this node.
#[derive(Debug, Parser)]
#[command(name = "vol", version, after_help = EXIT_HELP)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(
        long,
        env = "STOWAGE_SOCKET",
        default_value = "/run/stowage/csi.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// Output format: a table for people, JSON (one object per line) for scripts.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Print names only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

/// `vol` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a volume (succeeds if an identical one exists).
    Create {
        /// Volume name.
        name: String,
        /// Capacity, e.g. 10GiB.
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// Storage kind (image: give the layers with -o layers=KEY,... bottom first).
        #[arg(long, value_parser = ["dir", "loop", "image"], default_value = "dir")]
        kind: String,
        /// Filesystem of a loop volume.
        #[arg(long, value_parser = ["ext4", "xfs"])]
        fs: Option<String>,
        /// Further parameters, key=value (e.g. compression=zstd).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        opts: Vec<String>,
    },
    /// List volumes.
    Ls,
    /// Show one volume in full.
    Inspect {
        /// Volume name or id.
        name: String,
    },
    /// Delete a volume (it must not be staged, published or attached).
    Rm {
        /// Volume name or id.
        name: String,
    },
    /// Mount a volume into a running container (its mount namespace).
    Attach(AttachArgs),
    /// Unmount a volume from a running container.
    Detach {
        /// Volume name or id.
        name: String,
        /// A process in the container.
        #[arg(long)]
        pid: i32,
        /// The path inside the container.
        #[arg(long)]
        target: PathBuf,
    },
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Read-only image layers (for `kind=image` volumes).
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Make a new volume from a volume (or, with --from-snapshot, from a snapshot).
    Clone {
        /// The source volume (or snapshot with --from-snapshot).
        source: String,
        /// The new volume's name.
        name: String,
        /// Capacity of the new volume (default: the source's).
        #[arg(long)]
        size: Option<String>,
        /// SOURCE names a snapshot.
        #[arg(long)]
        from_snapshot: bool,
    },
    /// Grow a volume (online if it is mounted).
    Expand {
        /// Volume name or id.
        name: String,
        /// New capacity, e.g. 20GiB.
        #[arg(long)]
        size: String,
    },
    /// Send a snapshot of a volume to a peer daemon (`stowaged --peer`): incremental
    /// from the newest snapshot both hold, else full (btrfs send between btrfs pools,
    /// a chunk diff between plain ones).
    Replicate {
        /// Volume name or id.
        name: String,
        /// The peer's node id.
        #[arg(long)]
        to: String,
    },
    /// Replicas of other nodes' volumes held on this node.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Make this node's replica of a volume the primary (failover), from the newest
    /// snapshot it received. Run it on the replica's node.
    Promote {
        /// The replica's volume name or id.
        name: String,
    },
    /// Change mutable parameters: compression, replicas, replicationInterval.
    Modify {
        /// Volume name or id.
        name: String,
        /// KEY=VALUE (e.g. replicas=3, replicationInterval=1m).
        #[arg(required = true, value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Print a shell completion script.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `vol attach` arguments.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Volume name or id.
    pub name: String,
    /// A process in the container (e.g. from `podman inspect -f '{{.State.Pid}}'`).
    #[arg(long)]
    pub pid: i32,
    /// Absolute path inside the container; created if missing.
    #[arg(long)]
    pub target: PathBuf,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
}

/// `vol snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of a volume.
    Create {
        /// Volume name or id.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots (of one volume, if given).
    Ls {
        /// Volume name or id.
        volume: Option<String>,
    },
    /// Delete a snapshot.
    Rm {
        /// Snapshot name or id.
        name: String,
    },
}

/// `vol replica` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// List replicas and the snapshots each holds.
    Ls,
    /// Remove this node's replica of a volume (its primary normally does this when
    /// the volume is deleted).
    Rm {
        /// The volume's name or id.
        name: String,
    },
}

/// `vol layer` subcommands.
#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Import a layer tarball (plain, gzip or zstd) or every layer of an OCI image
    /// layout directory, bottom first. The path is read by the daemon on this node.
    Import {
        /// A layer tarball or an OCI image layout directory.
        path: PathBuf,
    },
    /// List stored layers.
    Ls,
    /// Remove a layer no volume uses.
    Rm {
        /// Layer key (`<hex>` or `blake3:<hex>`), diff_id or blob digest.
        key: String,
    },
}

/// A failed command: the message for stderr and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// Exit status.
    pub code: i32,
    /// One line saying what went wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn usage(message: impl Into<String>) -> CliError {
    CliError {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

fn from_status(s: tonic::Status) -> CliError {
    let code = match s.code() {
        Code::NotFound => EXIT_NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => EXIT_USAGE,
        _ => EXIT_ERROR,
    };
    let hint = match s.code() {
        Code::Aborted => " (another operation on it is running; try again)",
        // A message that already says what to do first needs no generic hint.
        Code::FailedPrecondition if s.message().contains(" first") => "",
        Code::FailedPrecondition => " (unmount, detach or unstage it first)",
        Code::ResourceExhausted => " (free space in the pool or ask for less)",
        Code::Unavailable => " (is stowaged running? see --socket)",
        _ => "",
    };
    CliError {
        code,
        message: format!("{}{hint}", s.message()),
    }
}

fn size_arg(s: &str) -> Result<u64, CliError> {
    parse_volume_size(s).map_err(|e| usage(format!("{e}")))
}

/// Connects to the daemon's admin service.
async fn connect(socket: &std::path::Path) -> Result<AdminClient<Channel>, CliError> {
    let channel = crate::client::connect(socket).await.map_err(|e| CliError {
        code: EXIT_ERROR,
        message: format!(
            "cannot reach stowaged at {}: {} (is it running? set --socket or STOWAGE_SOCKET)",
            socket.display(),
            crate::status::chain(&e)
        ),
    })?;
    Ok(AdminClient::new(channel))
}

/// A spinner on stderr while `fut` runs, shown only on a terminal.
async fn with_progress<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return fut.await;
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    let out = fut.await;
    bar.finish_and_clear();
    out
}

/// A local file error: exit 3 when it does not exist.
fn file_err(path: &std::path::Path, e: &std::io::Error) -> CliError {
    CliError {
        code: if e.kind() == std::io::ErrorKind::NotFound {
            EXIT_NOT_FOUND
        } else {
            EXIT_ERROR
        },
        message: format!("{}: {e}", path.display()),
    }
}

/// Bytes per ImportLayer chunk.
const IMPORT_CHUNK: usize = 256 * 1024;

/// `vol layer import`: streams a tarball to the daemon (with a byte progress bar on a
/// terminal), or names an OCI layout directory, which the daemon reads on this node.
async fn import_layer(
    admin: &mut AdminClient<Channel>,
    path: &std::path::Path,
) -> Result<Vec<pb::Layer>, CliError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, &e))?;
    if meta.is_dir() {
        let abs = std::fs::canonicalize(path).map_err(|e| file_err(path, &e))?;
        let first = pb::ImportLayerChunk {
            oci_layout_path: abs.display().to_string(),
            data: Vec::new(),
        };
        return with_progress(
            "importing",
            admin.import_layer(tokio_stream::iter(vec![first])),
        )
        .await
        .map(|r| r.into_inner().layers)
        .map_err(from_status);
    }
    let mut file = std::fs::File::open(path).map_err(|e| file_err(path, &e))?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(meta.len()).with_message("importing")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader_bar = bar.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let mut chunk = vec![0u8; IMPORT_CHUNK];
            let n = match file.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            chunk.truncate(n);
            reader_bar.inc(n as u64);
            let msg = pb::ImportLayerChunk {
                oci_layout_path: String::new(),
                data: chunk,
            };
            if tx.blocking_send(msg).is_err() {
                // The daemon stopped reading; its answer says why.
                return Ok(());
            }
        }
    });
    let answer = admin
        .import_layer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    bar.finish_and_clear();
    let read = reader.await.map_err(|e| CliError {
        code: EXIT_ERROR,
        message: format!("reading {}: {e}", path.display()),
    })?;
    // A local read error explains a truncated stream better than the daemon can.
    read.map_err(|e| file_err(path, &e))?;
    answer.map(|r| r.into_inner().layers).map_err(from_status)
}

/// The JSON form of a volume (`--output json`).
pub fn volume_json(v: &pb::Volume) -> serde_json::Value {
    json!({
        "id": v.id,
        "name": v.name,
        "kind": v.kind,
        "layout": if v.layout.is_empty() { serde_json::Value::Null } else { json!(v.layout) },
        "fs": if v.fs_type.is_empty() { serde_json::Value::Null } else { json!(v.fs_type) },
        "capacity_bytes": v.capacity_bytes,
        "capacity": format_size(v.capacity_bytes),
        "capacity_enforced": v.capacity_enforced,
        "created_at": v.created_at,
        "staging_path": if v.staging_path.is_empty() { serde_json::Value::Null } else { json!(v.staging_path) },
        "published_at": v.published_at,
        "attached_nodes": v.attached_nodes,
        "attached_into": v.attached_into,
        "source": if v.content_source.is_empty() { serde_json::Value::Null } else { json!(v.content_source) },
        "parameters": v.parameters,
        "mutable_parameters": v.mutable_parameters,
        "ephemeral": v.ephemeral,
        "condition": v.condition.as_ref().map(|c| json!({"abnormal": c.abnormal, "message": c.message})),
        "replicas": v.replicas.iter().map(|r| json!({
            "node_id": r.node_id,
            "state": r.state,
            "snapshot": r.snapshot,
            "lag_seconds": r.lag_seconds,
            "lag_bytes": r.lag_bytes,
            "bytes_sent": r.bytes_sent,
            "acknowledged_at": r.acknowledged_at,
            "taken_at": r.taken_at,
            "last_error": if r.last_error.is_empty() { serde_json::Value::Null } else { json!(r.last_error) },
        })).collect::<Vec<_>>(),
        "generation": v.generation,
        "copies": v.copies,
        "replication_interval_secs": v.replication_interval_secs,
    })
}

/// The JSON form of a snapshot.
pub fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "size": format_size(s.size_bytes),
        "created_at": s.created_at,
        "group_id": if s.group_id.is_empty() { serde_json::Value::Null } else { json!(s.group_id) },
    })
}

fn state_word(v: &pb::Volume) -> String {
    let mut words = Vec::new();
    if !v.attached_into.is_empty() {
        words.push(format!("attached({})", v.attached_into.len()));
    }
    if !v.published_at.is_empty() {
        words.push(format!("published({})", v.published_at.len()));
    } else if !v.staging_path.is_empty() {
        words.push("staged".to_string());
    }
    if v.condition.as_ref().is_some_and(|c| c.abnormal) {
        words.push("ABNORMAL".to_string());
    }
    if words.is_empty() {
        "idle".to_string()
    } else {
        words.join(",")
    }
}

/// Writes rows as aligned columns.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

/// One kind of listed object: how `-q`, `--output json` and the table show it.
trait Listed {
    const HEADER: &'static [&'static str];
    fn name(&self) -> &str;
    fn json(&self) -> serde_json::Value;
    fn row(&self) -> Vec<String>;
}

impl Listed for pb::Volume {
    const HEADER: &'static [&'static str] = &["NAME", "KIND", "FS", "SIZE", "STATE", "ID"];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        volume_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            if self.fs_type.is_empty() {
                "-".into()
            } else {
                self.fs_type.clone()
            },
            format_size(self.capacity_bytes),
            state_word(self),
            self.id.clone(),
        ]
    }
}

impl Listed for pb::Snapshot {
    const HEADER: &'static [&'static str] = &["NAME", "SIZE", "SOURCE", "ID"];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        snapshot_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            format_size(self.size_bytes),
            self.source_volume_id.clone(),
            self.id.clone(),
        ]
    }
}

/// The JSON form of a layer (`--output json`).
pub fn layer_json(l: &pb::Layer) -> serde_json::Value {
    serde_json::json!({
        "key": l.key,
        "diff_id": l.diff_id,
        "size_bytes": l.size_bytes,
        "entries": l.entries,
        "blobs": l.blobs,
        "imported_at": l.imported_at,
    })
}

impl Listed for pb::Layer {
    const HEADER: &'static [&'static str] = &["KEY", "DIFF_ID", "SIZE", "ENTRIES"];
    fn name(&self) -> &str {
        &self.key
    }
    fn json(&self) -> serde_json::Value {
        layer_json(self)
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.key.clone(),
            self.diff_id.clone(),
            format_size(self.size_bytes),
            self.entries.to_string(),
        ]
    }
}

impl Listed for pb::ReplicateVolumeResponse {
    const HEADER: &'static [&'static str] = &["SNAPSHOT", "PARENT", "INCREMENTAL", "BYTES SENT"];
    fn name(&self) -> &str {
        &self.snapshot
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "snapshot": self.snapshot,
            "parent": self.parent,
            "incremental": self.incremental,
            "bytes_sent": self.bytes_sent,
        })
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.snapshot.clone(),
            if self.parent.is_empty() {
                "-".into()
            } else {
                self.parent.clone()
            },
            self.incremental.to_string(),
            self.bytes_sent.to_string(),
        ]
    }
}

impl Listed for pb::Replica {
    const HEADER: &'static [&'static str] = &[
        "NAME",
        "KIND",
        "SOURCE NODE",
        "SNAPSHOTS",
        "LATEST",
        "VOLUME ID",
    ];
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "volume_id": self.volume_id,
            "name": self.name,
            "kind": self.kind,
            "fs_type": self.fs_type,
            "capacity_bytes": self.capacity_bytes,
            "source_node_id": self.source_node_id,
            "snapshots": self.snapshots,
            "latest_path": self.latest_path,
            "latest_stream_bytes": self.latest_stream_bytes,
            "latest_taken_at": self.latest_taken_at,
            "generation": self.generation,
            "split_brain": if self.split_brain.is_empty() { serde_json::Value::Null } else { serde_json::json!(self.split_brain) },
        })
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.source_node_id.clone(),
            self.snapshots.join(","),
            self.latest_path.clone(),
            self.volume_id.clone(),
        ]
    }
}

/// Prints objects as names (`-q`), one JSON object per line, or a table.
fn print_list<T: Listed>(cli: &Cli, out: &mut dyn Write, items: &[T]) -> std::io::Result<()> {
    if cli.quiet {
        for i in items {
            writeln!(out, "{}", i.name())?;
        }
        return Ok(());
    }
    match cli.output {
        Output::Json => {
            for i in items {
                writeln!(out, "{}", i.json())?;
            }
            Ok(())
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(Listed::row).collect();
            table(out, T::HEADER, &rows)
        }
    }
}

fn print_inspect(cli: &Cli, out: &mut dyn Write, v: &pb::Volume) -> std::io::Result<()> {
    if cli.quiet {
        return writeln!(out, "{}", v.name);
    }
    match cli.output {
        Output::Json => writeln!(out, "{}", volume_json(v)),
        Output::Table => {
            let json = volume_json(v);
            // serde_json keeps keys sorted: a stable, readable listing.
            if let Some(map) = json.as_object() {
                for (k, val) in map {
                    let shown = match val {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    writeln!(out, "{k:<18} {shown}")?;
                }
            }
            Ok(())
        }
    }
}

/// `KEY=VALUE` arguments as a map; anything else is a usage error.
fn key_values(items: &[String]) -> Result<std::collections::HashMap<String, String>, CliError> {
    items
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("option {o:?} is not KEY=VALUE")))
        })
        .collect()
}

fn io_err(e: std::io::Error) -> CliError {
    CliError {
        code: EXIT_ERROR,
        message: format!("write output: {e}"),
    }
}

/// Runs a parsed command, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    if let Command::Completion { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        // Generated into memory: clap_complete panics on a failed write, and a reader
        // that stops early (`| head`) is no error.
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "vol", &mut script);
        return match out.write_all(&script) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(CliError {
                code: EXIT_ERROR,
                message: format!("writing the completion script: {e}"),
            }),
        };
    }
    let mut admin = connect(&cli.socket).await?;
    match &cli.command {
        Command::Completion { .. } => Ok(()),
        Command::Create {
            name,
            size,
            kind,
            fs,
            opts,
        } => {
            let mut parameters =
                std::collections::HashMap::from([("kind".to_string(), kind.clone())]);
            if let Some(fs) = fs {
                parameters.insert("fsType".to_string(), fs.clone());
            }
            parameters.extend(key_values(opts)?);
            let req = pb::CreateVolumeRequest {
                name: name.clone(),
                capacity_bytes: size_arg(size)?,
                parameters,
            };
            let v = with_progress("creating", admin.create_volume(req))
                .await
                .map_err(from_status)?
                .into_inner()
                .volume
                .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
        Command::Ls => {
            let vols = admin
                .list_volumes(pb::ListVolumesRequest {})
                .await
                .map_err(from_status)?
                .into_inner()
                .volumes;
            print_list(cli, out, &vols).map_err(io_err)
        }
        Command::Inspect { name } => {
            let v = admin
                .get_volume(pb::GetVolumeRequest {
                    volume: name.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .volume
                .unwrap_or_default();
            print_inspect(cli, out, &v).map_err(io_err)
        }
        Command::Rm { name } => {
            admin
                .delete_volume(pb::DeleteVolumeRequest {
                    volume: name.clone(),
                })
                .await
                .map_err(from_status)?;
            if !cli.quiet && cli.output == Output::Table {
                writeln!(out, "removed {name}").map_err(io_err)?;
            }
            Ok(())
        }
        Command::Attach(a) => {
            let v = admin
                .attach_volume(pb::AttachVolumeRequest {
                    volume: a.name.clone(),
                    pid: a.pid,
                    target: a.target.display().to_string(),
                    read_only: a.read_only,
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .volume
                .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
        Command::Detach { name, pid, target } => {
            admin
                .detach_volume(pb::DetachVolumeRequest {
                    volume: name.clone(),
                    pid: *pid,
                    target: target.display().to_string(),
                })
                .await
                .map_err(from_status)?;
            if !cli.quiet && cli.output == Output::Table {
                writeln!(out, "detached {name} from {pid}:{}", target.display()).map_err(io_err)?;
            }
            Ok(())
        }
        Command::Snapshot(SnapshotCommand::Create { volume, name }) => {
            let s = with_progress(
                "snapshotting",
                admin.create_snapshot(pb::CreateSnapshotRequest {
                    volume: volume.clone(),
                    name: name.clone(),
                }),
            )
            .await
            .map_err(from_status)?
            .into_inner()
            .snapshot
            .unwrap_or_default();
            print_list(cli, out, &[s]).map_err(io_err)
        }
        Command::Replicate { name, to } => {
            let r = with_progress(
                "replicating",
                admin.replicate_volume(pb::ReplicateVolumeRequest {
                    volume: name.clone(),
                    to_node_id: to.clone(),
                }),
            )
            .await
            .map_err(from_status)?
            .into_inner();
            print_list(cli, out, &[r]).map_err(io_err)
        }
        Command::Replica(ReplicaCommand::Rm { name }) => {
            admin
                .remove_replica(pb::RemoveReplicaRequest {
                    volume: name.clone(),
                })
                .await
                .map_err(from_status)?;
            if !cli.quiet && cli.output == Output::Table {
                writeln!(out, "removed replica {name}").map_err(io_err)?;
            }
            Ok(())
        }
        Command::Replica(ReplicaCommand::Ls) => {
            let replicas = admin
                .list_replicas(pb::ListReplicasRequest {})
                .await
                .map_err(from_status)?
                .into_inner()
                .replicas;
            print_list(cli, out, &replicas).map_err(io_err)
        }
        Command::Snapshot(SnapshotCommand::Ls { volume }) => {
            let snaps = admin
                .list_snapshots(pb::ListSnapshotsRequest {
                    volume: volume.clone().unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .snapshots;
            print_list(cli, out, &snaps).map_err(io_err)
        }
        Command::Snapshot(SnapshotCommand::Rm { name }) => {
            admin
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    snapshot: name.clone(),
                })
                .await
                .map_err(from_status)?;
            if !cli.quiet && cli.output == Output::Table {
                writeln!(out, "removed snapshot {name}").map_err(io_err)?;
            }
            Ok(())
        }
        Command::Layer(LayerCommand::Import { path }) => {
            let layers = import_layer(&mut admin, path).await?;
            print_list(cli, out, &layers).map_err(io_err)
        }
        Command::Layer(LayerCommand::Ls) => {
            let layers = admin
                .list_layers(pb::ListLayersRequest {})
                .await
                .map_err(from_status)?
                .into_inner()
                .layers;
            print_list(cli, out, &layers).map_err(io_err)
        }
        Command::Layer(LayerCommand::Rm { key }) => {
            admin
                .remove_layer(pb::RemoveLayerRequest { layer: key.clone() })
                .await
                .map_err(from_status)?;
            if !cli.quiet && cli.output == Output::Table {
                writeln!(out, "removed layer {key}").map_err(io_err)?;
            }
            Ok(())
        }
        Command::Clone {
            source,
            name,
            size,
            from_snapshot,
        } => {
            let capacity_bytes = match size {
                Some(s) => size_arg(s)?,
                None => 0,
            };
            let req = pb::CloneVolumeRequest {
                source: if *from_snapshot {
                    String::new()
                } else {
                    source.clone()
                },
                snapshot: if *from_snapshot {
                    source.clone()
                } else {
                    String::new()
                },
                name: name.clone(),
                capacity_bytes,
            };
            let v = with_progress("cloning", admin.clone_volume(req))
                .await
                .map_err(from_status)?
                .into_inner()
                .volume
                .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
        Command::Promote { name } => {
            let v = with_progress(
                "promoting",
                admin.promote_volume(pb::PromoteVolumeRequest {
                    volume: name.clone(),
                }),
            )
            .await
            .map_err(from_status)?
            .into_inner()
            .volume
            .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
        Command::Modify { name, params } => {
            let v = admin
                .modify_volume(pb::ModifyVolumeRequest {
                    volume: name.clone(),
                    parameters: key_values(params)?,
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .volume
                .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
        Command::Expand { name, size } => {
            let v = with_progress(
                "expanding",
                admin.expand_volume(pb::ExpandVolumeRequest {
                    volume: name.clone(),
                    capacity_bytes: size_arg(size)?,
                }),
            )
            .await
            .map_err(from_status)?
            .into_inner()
            .volume
            .unwrap_or_default();
            print_list(cli, out, &[v]).map_err(io_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_grpc_codes() {
        assert_eq!(
            from_status(tonic::Status::not_found("x")).code,
            EXIT_NOT_FOUND
        );
        assert_eq!(
            from_status(tonic::Status::invalid_argument("x")).code,
            EXIT_USAGE
        );
        assert_eq!(from_status(tonic::Status::internal("x")).code, EXIT_ERROR);
        let busy = from_status(tonic::Status::failed_precondition("volume v is staged"));
        assert!(
            busy.message.contains("unmount, detach or unstage"),
            "{}",
            busy.message
        );
    }

    #[test]
    fn volume_json_has_a_stable_shape() {
        let v = pb::Volume {
            id: "v-1".into(),
            name: "data".into(),
            kind: "loop".into(),
            fs_type: "ext4".into(),
            capacity_bytes: 10 << 30,
            layout: "host-image".into(),
            ..Default::default()
        };
        let j = volume_json(&v);
        assert_eq!(j["capacity"], "10GiB");
        assert_eq!(j["layout"], "host-image");
        assert_eq!(j["fs"], "ext4");
        assert!(j["staging_path"].is_null());
        let mut keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "attached_into",
                "attached_nodes",
                "capacity",
                "capacity_bytes",
                "capacity_enforced",
                "condition",
                "copies",
                "created_at",
                "ephemeral",
                "fs",
                "generation",
                "id",
                "kind",
                "layout",
                "mutable_parameters",
                "name",
                "parameters",
                "published_at",
                "replicas",
                "replication_interval_secs",
                "source",
                "staging_path"
            ]
        );
    }

    #[test]
    fn layer_json_and_rows_have_a_stable_shape() {
        let l = pb::Layer {
            key: "ab".repeat(32),
            diff_id: format!("sha256:{}", "cd".repeat(32)),
            size_bytes: 3 << 20,
            entries: 7,
            blobs: vec![format!("sha256:{}", "ef".repeat(32))],
            imported_at: 1,
        };
        let j = layer_json(&l);
        let mut keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "blobs",
                "diff_id",
                "entries",
                "imported_at",
                "key",
                "size_bytes"
            ]
        );
        assert_eq!(j["entries"], 7);
        assert_eq!(Listed::name(&l), l.key);
        assert_eq!(
            l.row(),
            vec![l.key.clone(), l.diff_id.clone(), "3MiB".into(), "7".into()]
        );
    }

    #[test]
    fn a_message_that_says_what_to_do_first_gets_no_generic_hint() {
        let e = from_status(tonic::Status::failed_precondition(
            "layer k is used by volume a; delete those volumes first",
        ));
        assert_eq!(e.code, EXIT_ERROR);
        assert!(!e.message.contains("unmount"), "{}", e.message);
        let e = from_status(tonic::Status::failed_precondition("volume a is staged"));
        assert!(e.message.ends_with("(unmount, detach or unstage it first)"));
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("3 volume, snapshot or layer not found"),
            "{help}"
        );
    }
}
