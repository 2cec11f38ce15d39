//! The `vol` command line: its arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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

#[cfg(test)]
mod tests {
    use super::*;

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
