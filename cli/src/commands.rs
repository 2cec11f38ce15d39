//! One function per `vol` command: build the admin request, call the daemon, show the
//! answer.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use stowage_proto::stowage::v1 as pb;
use stowage_proto::stowage::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use volume_core::size::parse_volume_size;

use crate::args::{
    AttachArgs, Cli, Command, LayerCommand, Output, ReplicaCommand, SnapshotCommand,
};
use crate::error::{CliError, EXIT_ERROR, file_err, from_status, io_err, usage};
use crate::render::{Listed, print_inspect, print_list};

/// A command connected to the daemon, and where and how it shows its answer.
struct Session<'a> {
    cli: &'a Cli,
    admin: AdminClient<Channel>,
    out: &'a mut dyn Write,
}

impl Session<'_> {
    /// Shows what the daemon answered.
    fn show<T: Listed>(&mut self, items: &[T]) -> Result<(), CliError> {
        print_list(self.cli, &mut *self.out, items).map_err(io_err)
    }

    /// Says what was done, in table output only (`-q` and JSON stay silent).
    fn done(&mut self, what: std::fmt::Arguments<'_>) -> Result<(), CliError> {
        if !self.cli.quiet && self.cli.output == Output::Table {
            writeln!(self.out, "{what}").map_err(io_err)?;
        }
        Ok(())
    }
}

/// Runs a parsed command, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    if let Command::Completion { shell } = &cli.command {
        return completion(*shell, out);
    }
    let admin = crate::client::admin(&cli.socket).await?;
    let s = &mut Session { cli, admin, out };
    match &cli.command {
        Command::Completion { .. } => Ok(()),
        Command::Create {
            name,
            size,
            kind,
            fs,
            opts,
        } => create(s, name, size, kind, fs.as_deref(), opts).await,
        Command::Ls => ls(s).await,
        Command::Inspect { name } => inspect(s, name).await,
        Command::Rm { name } => rm(s, name).await,
        Command::Attach(a) => attach(s, a).await,
        Command::Detach { name, pid, target } => detach(s, name, *pid, target).await,
        Command::Snapshot(SnapshotCommand::Create { volume, name }) => {
            snapshot_create(s, volume, name).await
        }
        Command::Snapshot(SnapshotCommand::Ls { volume }) => {
            snapshot_ls(s, volume.as_deref()).await
        }
        Command::Snapshot(SnapshotCommand::Rm { name }) => snapshot_rm(s, name).await,
        Command::Replicate { name, to } => replicate(s, name, to).await,
        Command::Replica(ReplicaCommand::Ls) => replica_ls(s).await,
        Command::Replica(ReplicaCommand::Rm { name }) => replica_rm(s, name).await,
        Command::Layer(LayerCommand::Import { path }) => layer_import(s, path).await,
        Command::Layer(LayerCommand::Ls) => layer_ls(s).await,
        Command::Layer(LayerCommand::Rm { key }) => layer_rm(s, key).await,
        Command::Clone {
            source,
            name,
            size,
            from_snapshot,
        } => clone(s, source, name, size.as_deref(), *from_snapshot).await,
        Command::Promote { name } => promote(s, name).await,
        Command::Modify { name, params } => modify(s, name, params).await,
        Command::Expand { name, size } => expand(s, name, size).await,
    }
}

/// `vol completion SHELL`: the completion script, generated into memory (clap_complete
/// panics on a failed write, and a reader that stops early, `| head`, is no error).
fn completion(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vol", &mut script);
    match out.write_all(&script) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError {
            code: EXIT_ERROR,
            message: format!("writing the completion script: {e}"),
        }),
    }
}

async fn create(
    s: &mut Session<'_>,
    name: &str,
    size: &str,
    kind: &str,
    fs: Option<&str>,
    opts: &[String],
) -> Result<(), CliError> {
    let mut parameters = HashMap::from([("kind".to_string(), kind.to_string())]);
    if let Some(fs) = fs {
        parameters.insert("fsType".to_string(), fs.to_string());
    }
    parameters.extend(key_values(opts)?);
    let req = pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_bytes: size_arg(size)?,
        parameters,
    };
    let v = with_progress("creating", s.admin.create_volume(req))
        .await
        .map_err(from_status)?
        .into_inner()
        .volume
        .unwrap_or_default();
    s.show(&[v])
}

async fn ls(s: &mut Session<'_>) -> Result<(), CliError> {
    let vols = s
        .admin
        .list_volumes(pb::ListVolumesRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .volumes;
    s.show(&vols)
}

async fn inspect(s: &mut Session<'_>, name: &str) -> Result<(), CliError> {
    let v = s
        .admin
        .get_volume(pb::GetVolumeRequest {
            volume: name.to_string(),
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .volume
        .unwrap_or_default();
    print_inspect(s.cli, &mut *s.out, &v).map_err(io_err)
}

async fn rm(s: &mut Session<'_>, name: &str) -> Result<(), CliError> {
    s.admin
        .delete_volume(pb::DeleteVolumeRequest {
            volume: name.to_string(),
        })
        .await
        .map_err(from_status)?;
    s.done(format_args!("removed {name}"))
}

async fn attach(s: &mut Session<'_>, a: &AttachArgs) -> Result<(), CliError> {
    let v = s
        .admin
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
    s.show(&[v])
}

async fn detach(s: &mut Session<'_>, name: &str, pid: i32, target: &Path) -> Result<(), CliError> {
    s.admin
        .detach_volume(pb::DetachVolumeRequest {
            volume: name.to_string(),
            pid,
            target: target.display().to_string(),
        })
        .await
        .map_err(from_status)?;
    s.done(format_args!(
        "detached {name} from {pid}:{}",
        target.display()
    ))
}

async fn snapshot_create(s: &mut Session<'_>, volume: &str, name: &str) -> Result<(), CliError> {
    let snap = with_progress(
        "snapshotting",
        s.admin.create_snapshot(pb::CreateSnapshotRequest {
            volume: volume.to_string(),
            name: name.to_string(),
        }),
    )
    .await
    .map_err(from_status)?
    .into_inner()
    .snapshot
    .unwrap_or_default();
    s.show(&[snap])
}

async fn snapshot_ls(s: &mut Session<'_>, volume: Option<&str>) -> Result<(), CliError> {
    let snaps = s
        .admin
        .list_snapshots(pb::ListSnapshotsRequest {
            volume: volume.unwrap_or_default().to_string(),
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .snapshots;
    s.show(&snaps)
}

async fn snapshot_rm(s: &mut Session<'_>, name: &str) -> Result<(), CliError> {
    s.admin
        .delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot: name.to_string(),
        })
        .await
        .map_err(from_status)?;
    s.done(format_args!("removed snapshot {name}"))
}

async fn replicate(s: &mut Session<'_>, name: &str, to: &str) -> Result<(), CliError> {
    let r = with_progress(
        "replicating",
        s.admin.replicate_volume(pb::ReplicateVolumeRequest {
            volume: name.to_string(),
            to_node_id: to.to_string(),
        }),
    )
    .await
    .map_err(from_status)?
    .into_inner();
    s.show(&[r])
}

async fn replica_ls(s: &mut Session<'_>) -> Result<(), CliError> {
    let replicas = s
        .admin
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .replicas;
    s.show(&replicas)
}

async fn replica_rm(s: &mut Session<'_>, name: &str) -> Result<(), CliError> {
    s.admin
        .remove_replica(pb::RemoveReplicaRequest {
            volume: name.to_string(),
        })
        .await
        .map_err(from_status)?;
    s.done(format_args!("removed replica {name}"))
}

async fn layer_import(s: &mut Session<'_>, path: &Path) -> Result<(), CliError> {
    let layers = import_layer(&mut s.admin, path).await?;
    s.show(&layers)
}

async fn layer_ls(s: &mut Session<'_>) -> Result<(), CliError> {
    let layers = s
        .admin
        .list_layers(pb::ListLayersRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .layers;
    s.show(&layers)
}

async fn layer_rm(s: &mut Session<'_>, key: &str) -> Result<(), CliError> {
    s.admin
        .remove_layer(pb::RemoveLayerRequest {
            layer: key.to_string(),
        })
        .await
        .map_err(from_status)?;
    s.done(format_args!("removed layer {key}"))
}

async fn clone(
    s: &mut Session<'_>,
    source: &str,
    name: &str,
    size: Option<&str>,
    from_snapshot: bool,
) -> Result<(), CliError> {
    let capacity_bytes = match size {
        Some(size) => size_arg(size)?,
        None => 0,
    };
    let (source, snapshot) = if from_snapshot {
        (String::new(), source.to_string())
    } else {
        (source.to_string(), String::new())
    };
    let req = pb::CloneVolumeRequest {
        source,
        snapshot,
        name: name.to_string(),
        capacity_bytes,
    };
    let v = with_progress("cloning", s.admin.clone_volume(req))
        .await
        .map_err(from_status)?
        .into_inner()
        .volume
        .unwrap_or_default();
    s.show(&[v])
}

async fn promote(s: &mut Session<'_>, name: &str) -> Result<(), CliError> {
    let v = with_progress(
        "promoting",
        s.admin.promote_volume(pb::PromoteVolumeRequest {
            volume: name.to_string(),
        }),
    )
    .await
    .map_err(from_status)?
    .into_inner()
    .volume
    .unwrap_or_default();
    s.show(&[v])
}

async fn modify(s: &mut Session<'_>, name: &str, params: &[String]) -> Result<(), CliError> {
    let v = s
        .admin
        .modify_volume(pb::ModifyVolumeRequest {
            volume: name.to_string(),
            parameters: key_values(params)?,
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .volume
        .unwrap_or_default();
    s.show(&[v])
}

async fn expand(s: &mut Session<'_>, name: &str, size: &str) -> Result<(), CliError> {
    let v = with_progress(
        "expanding",
        s.admin.expand_volume(pb::ExpandVolumeRequest {
            volume: name.to_string(),
            capacity_bytes: size_arg(size)?,
        }),
    )
    .await
    .map_err(from_status)?
    .into_inner()
    .volume
    .unwrap_or_default();
    s.show(&[v])
}

fn size_arg(s: &str) -> Result<u64, CliError> {
    parse_volume_size(s).map_err(|e| usage(format!("{e}")))
}

/// `KEY=VALUE` arguments as a map; anything else is a usage error.
fn key_values(items: &[String]) -> Result<HashMap<String, String>, CliError> {
    items
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("option {o:?} is not KEY=VALUE")))
        })
        .collect()
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

/// Bytes per ImportLayer chunk.
const IMPORT_CHUNK: usize = 256 * 1024;

/// `vol layer import`: streams a tarball to the daemon (with a byte progress bar on a
/// terminal), or names an OCI layout directory, which the daemon reads on this node.
async fn import_layer(
    admin: &mut AdminClient<Channel>,
    path: &Path,
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
