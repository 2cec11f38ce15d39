//! `stowaged`: the Stowage daemon. Parses flags, sets up logging, opens the pool and
//! serves CSI on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use stowage_daemon::DriverConfig;
use stowage_daemon::endpoint::{bind_private, socket_path};
use stowage_daemon::server::{StateLayout, open_driver, serve};
use volume_core::PoolConfig;
use volume_core::model::Layout;
use volume_core::os::Host;
use volume_core::size::parse_size;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Stowage storage daemon: the CSI, admin and peer services, replication, the
/// Docker/Podman volume plugin and metrics, over this node's pool.
///
/// A flag given twice takes its last value, so a unit's drop-in or a script can
/// append to the arguments it inherits.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    /// CSI endpoint to listen on (unix:///path).
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/stowage/csi.sock"
    )]
    endpoint: String,
    /// State root: metadata, the embedded pool image and its mount point.
    #[arg(long, env = "STOWAGE_STATE_DIR", default_value = "/var/lib/stowage")]
    state_dir: PathBuf,
    /// This node's id (defaults to the host name).
    #[arg(long, env = "STOWAGE_NODE_ID")]
    node_id: Option<String>,
    /// Pool: `embedded` (btrfs image under the state dir), `btrfs:/dev/DEVICE` (a disk
    /// or partition formatted btrfs, mounted by the daemon under the state dir: the
    /// production setup), `btrfs:/path` (an existing btrfs mount) or `dir:/path` (any
    /// filesystem; directory sizes not enforced).
    #[arg(long, env = "STOWAGE_POOL", default_value = "embedded")]
    pool: String,
    /// Size of the embedded pool image when it is first created (sparse).
    #[arg(long, env = "STOWAGE_POOL_SIZE", default_value = "20GiB")]
    pool_size: String,
    /// Where an embedded pool's new loop volumes keep their images: `host` (a
    /// preallocated file on the state directory's filesystem, one loop device: the
    /// fastest) or `pool` (a nodatacow file inside the pool image). Replicated loop
    /// volumes are always in the pool.
    #[arg(long, env = "STOWAGE_LOOP_IMAGES", value_enum, default_value = "host")]
    loop_images: LoopImages,
    /// Most bytes of file data one imported image layer may write (holes excluded).
    #[arg(long, env = "STOWAGE_MAX_LAYER_SIZE", default_value = "8GiB")]
    max_layer_size: String,
    /// Quota of the image layer store (a subvolume of a btrfs pool); 0: a quarter of
    /// the pool.
    #[arg(long, env = "STOWAGE_LAYER_STORE_SIZE", default_value = "0")]
    layer_store_size: String,
    /// Free space a layer import must leave on the layer store's filesystem.
    #[arg(long, env = "STOWAGE_LAYER_RESERVE_FREE", default_value = "1GiB")]
    layer_reserve_free: String,
    /// Volumes this node accepts (NodeGetInfo max_volumes_per_node; 0 = no limit).
    #[arg(long, env = "STOWAGE_MAX_VOLUMES_PER_NODE", default_value_t = 256)]
    max_volumes_per_node: i64,
    /// Refuse NodeStage of volumes not ControllerPublished to this node. Set false
    /// where the CO skips ControllerPublish (Kubernetes CSIDriver attachRequired: false).
    #[arg(long, env = "STOWAGE_REQUIRE_CONTROLLER_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    require_controller_publish: bool,
    /// When the metadata database is missing, empty or damaged while the pool holds
    /// volumes, rebuild it from the pool (the damaged file is kept beside it) instead
    /// of refusing to start. A sound database is never touched.
    #[arg(long, env = "STOWAGE_REBUILD_METADATA")]
    rebuild_metadata: bool,
    /// The `stowage-overlay` program that mounts image volumes with `overlay=fuse`
    /// (default: `stowage-overlay` next to this executable).
    #[arg(long, env = "STOWAGE_OVERLAY_PROGRAM")]
    overlay_program: Option<PathBuf>,
    /// Address to serve Prometheus `/metrics` and `/healthz` on (e.g. 127.0.0.1:9808);
    /// not served when unset.
    #[arg(long, env = "STOWAGE_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Unix socket to serve the Docker/Podman volume plugin protocol on (e.g.
    /// /run/docker/plugins/stowage.sock); not served when unset.
    #[arg(long, env = "STOWAGE_PLUGIN_SOCKET")]
    plugin_socket: Option<PathBuf>,
    /// Address to serve the peer service on, for other daemons (e.g. 0.0.0.0:7420, or
    /// 127.0.0.1:0 for any free port); the bound address is written to
    /// `<state-dir>/peer.addr`. Needs --cluster-secret-file. Not served when unset.
    #[arg(long, env = "STOWAGE_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// File holding the cluster's shared secret (printable ASCII; surrounding
    /// whitespace ignored), which peers present and this daemon presents to them.
    #[arg(long, env = "STOWAGE_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Peer link over mutual TLS: this node's certificate (PEM), which must name its
    /// node id as a DNS subject alternative name. With --peer-tls-key and
    /// --peer-tls-ca; without them the link is plain TCP.
    #[arg(long, env = "STOWAGE_PEER_TLS_CERT")]
    peer_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM), for --peer-tls-cert.
    #[arg(long, env = "STOWAGE_PEER_TLS_KEY")]
    peer_tls_key: Option<PathBuf>,
    /// The cluster CA certificate (PEM) every peer's certificate must be signed by.
    #[arg(long, env = "STOWAGE_PEER_TLS_CA")]
    peer_tls_ca: Option<PathBuf>,
    /// A peer daemon, NODE_ID=HOST:PORT (its --peer-listen address); repeatable.
    #[arg(long = "peer", value_name = "NODE_ID=HOST:PORT")]
    peers: Vec<String>,
    /// Run as the cluster controller instead: serve only CSI Identity and Controller
    /// on --endpoint, carrying each call to the daemon of the node that owns the
    /// volume (the --peer list; --cluster-secret-file and the peer TLS flags apply).
    /// Opens no pool and ignores the node flags.
    #[arg(long, env = "STOWAGE_CLUSTER_CONTROLLER")]
    cluster_controller: bool,
    /// Log format.
    #[arg(long, env = "STOWAGE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Where an embedded pool's loop images go (`--loop-images`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LoopImages {
    /// On the host's filesystem, beside the pool image.
    Host,
    /// Inside the pool image.
    Pool,
}

fn pool_config(args: &Args, layout: &StateLayout) -> anyhow::Result<PoolConfig> {
    Ok(match args.pool.as_str() {
        "embedded" => PoolConfig::Embedded {
            image: layout.pool_image(),
            mount: layout.pool_mount(),
            size: parse_size(&args.pool_size).context("--pool-size")?,
            images: layout.host_images(),
            loop_layout: match args.loop_images {
                LoopImages::Host => Layout::HostImage,
                LoopImages::Pool => Layout::PoolImage,
            },
        },
        other => match other.split_once(':') {
            // A device node: a disk or partition of its own, mounted by the daemon.
            Some(("btrfs", p)) if p.starts_with("/dev/") => PoolConfig::Device {
                device: p.into(),
                mount: layout.pool_mount(),
            },
            Some(("btrfs", p)) => PoolConfig::Btrfs { path: p.into() },
            Some(("dir", p)) => PoolConfig::Dir { path: p.into() },
            _ => anyhow::bail!("--pool {other:?}: expected embedded, btrfs:/path or dir:/path"),
        },
    })
}

/// Host-image volumes live beside an embedded pool only: a start with another pool
/// would make them unreachable (and a delete of one would leave its image behind), so
/// it is refused while `images` holds any.
fn refuse_to_strand_host_images(pool: &PoolConfig, images: &std::path::Path) -> anyhow::Result<()> {
    if matches!(pool, PoolConfig::Embedded { .. }) {
        return Ok(());
    }
    let volumes = images.join("volumes");
    let held = match std::fs::read_dir(&volumes) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("read {}", volumes.display())),
    };
    if held > 0 {
        anyhow::bail!(
            "{} holds {held} loop volume image(s) of the embedded pool (layout host-image), \
             which another --pool cannot reach: start with --pool embedded, or delete or move \
             those volumes first",
            volumes.display()
        );
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The daemon's stop: SIGTERM or SIGINT sets it; every server waits on it.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// A stop set by the first SIGTERM or SIGINT.
    fn on_signals() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    /// Completes once the stop is set.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Completes 2 s after the stop. Graceful shutdown waits for clients to hang up,
    /// and a CO holding its connection open must not keep the daemon alive.
    fn grace(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stopped();
        async move {
            stopped.await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn main() -> anyhow::Result<()> {
    // The namespace helper must stay single-threaded: handle it before any runtime.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(volume_core::os::nsmount::HELPER_ARG) {
        std::process::exit(volume_core::os::nsmount::helper_main(&argv[2..]));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(run())
}

/// The cluster secret and the configured peers of `args`.
fn peer_config(
    args: &Args,
) -> anyhow::Result<(
    Option<stowage_daemon::replication::link::ClusterSecret>,
    stowage_daemon::replication::link::Peers,
)> {
    let secret = match &args.cluster_secret_file {
        Some(path) => Some(stowage_daemon::replication::link::ClusterSecret::from_file(
            path,
        )?),
        None => None,
    };
    if secret.is_none() && (args.peer_listen.is_some() || !args.peers.is_empty()) {
        anyhow::bail!("--peer-listen and --peer need --cluster-secret-file");
    }
    let mut peers = stowage_daemon::replication::link::Peers::parse(&args.peers, secret.clone())?;
    peers.tls = match (&args.peer_tls_cert, &args.peer_tls_key, &args.peer_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            stowage_daemon::replication::link::PeerTls::from_files(cert, key, ca)?,
        ),
        (None, None, None) => None,
        _ => anyhow::bail!("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together"),
    };
    Ok((secret, peers))
}

/// `--cluster-controller`: the CSI Controller of the whole cluster, no pool.
async fn run_cluster_controller(args: &Args) -> anyhow::Result<()> {
    let (_, peers) = peer_config(args)?;
    if peers.addrs.is_empty() || peers.secret.is_none() {
        anyhow::bail!(
            "--cluster-controller needs the nodes' peer listeners (--peer NODE_ID=HOST:PORT) \
             and --cluster-secret-file"
        );
    }
    let nodes: Vec<String> = peers.addrs.keys().cloned().collect();
    let cluster = stowage_daemon::cluster::Cluster::new(peers);
    let socket = socket_path(&args.endpoint)?;
    let listener = bind_private(&socket)?;
    let stop = Stop::on_signals();
    tracing::info!(endpoint = %args.endpoint, ?nodes, version = env!("CARGO_PKG_VERSION"), "serving the cluster controller");
    let metrics = Arc::new(stowage_daemon::metrics::Metrics::new());
    let grace = stop.grace();
    tokio::select! {
        served = stowage_daemon::cluster::serve(cluster, metrics, listener, stop.stopped()) => served?,
        () = grace => tracing::info!("clients still connected after 2 s; exiting"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    if args.cluster_controller {
        return run_cluster_controller(&args).await;
    }
    let layout = StateLayout::create(&args.state_dir)?;
    let pool = pool_config(&args, &layout)?;
    refuse_to_strand_host_images(&pool, &layout.host_images())?;
    let node_id = match &args.node_id {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("host name for --node-id")?
            .to_string_lossy()
            .into_owned(),
    };
    let helper = std::env::current_exe().context("find own executable for the namespace helper")?;
    let overlay_program = match &args.overlay_program {
        Some(p) => std::path::absolute(p).context("--overlay-program")?,
        None => helper.with_file_name("stowage-overlay"),
    };
    let (secret, peers) = peer_config(&args)?;
    let peer_addr_file = layout.root.join("peer.addr");
    let config = DriverConfig {
        node_id: node_id.clone(),
        max_volumes_per_node: args.max_volumes_per_node,
        require_controller_publish: args.require_controller_publish,
        rebuild_metadata: args.rebuild_metadata,
        layer_store_size: if args.layer_store_size.trim() == "0" {
            0
        } else {
            parse_size(&args.layer_store_size).context("--layer-store-size")?
        },
        layer_limits: layer_store::ImportLimits {
            max_bytes: parse_size(&args.max_layer_size).context("--max-layer-size")?,
            reserve_free: parse_size(&args.layer_reserve_free).context("--layer-reserve-free")?,
            ..Default::default()
        },
        overlay_program,
        peers,
    };
    let socket = socket_path(&args.endpoint)?;
    let plugin_mounts = stowage_daemon::plugin::mounts_dir(&layout.root);
    let (driver, report) = tokio::task::spawn_blocking(move || {
        open_driver(&layout, &pool, config, Host::real(helper))
    })
    .await??;
    if report.needs_attention() {
        tracing::warn!(
            ?report,
            "reconcile found things it cannot explain; left in place"
        );
    } else {
        tracing::info!(?report, "reconciled");
    }
    // Bound before the CSI socket, so a client that sees that socket finds this one too.
    let plugin_listener = match &args.plugin_socket {
        Some(path) => Some(bind_private(path).context("--plugin-socket")?),
        None => None,
    };
    // Also before the CSI socket: a client that sees that socket finds `peer.addr`.
    let peer_listener = match (&args.peer_listen, secret) {
        (Some(addr), Some(secret)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--peer-listen {addr}"))?;
            let bound = listener.local_addr().context("peer listener address")?;
            std::fs::write(&peer_addr_file, format!("{bound}\n"))
                .with_context(|| format!("write {}", peer_addr_file.display()))?;
            tracing::info!(peer.listen = %bound, "serving the peer service");
            Some((listener, secret))
        }
        _ => {
            // A file left by an earlier run with --peer-listen would name a dead port.
            let _ = std::fs::remove_file(&peer_addr_file);
            None
        }
    };
    let listener = bind_private(&socket)?;
    let stop = Stop::on_signals();
    if let Some(addr) = args.metrics_address {
        let http = stowage_daemon::metrics::serve_http(
            addr,
            Arc::clone(&driver.metrics),
            Arc::clone(&driver.manager),
            stop.stopped(),
        );
        tokio::spawn(async move {
            if let Err(e) = http.await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    if let Some((listener, secret)) = peer_listener {
        let peer = stowage_daemon::grpc::peer::serve(
            listener,
            Arc::clone(&driver),
            secret,
            stop.stopped(),
        );
        tokio::spawn(async move {
            if let Err(e) = peer.await {
                tracing::error!(error = %e, "peer server failed");
            }
        });
    }
    if !driver.config.peers.addrs.is_empty() {
        // Replicated volumes need their peers; without any, there is nothing to run.
        tokio::spawn(stowage_daemon::replication::run(
            Arc::clone(&driver),
            stop.stopped(),
        ));
    }
    if let Some(listener) = plugin_listener {
        let plugin = stowage_daemon::plugin::serve(
            listener,
            stowage_daemon::service::Volumes::new(Arc::clone(&driver)),
            plugin_mounts,
            stop.stopped(),
        );
        tokio::spawn(async move {
            if let Err(e) = plugin.await {
                tracing::error!(error = %e, "volume plugin server failed");
            }
        });
    }
    tracing::info!(endpoint = %args.endpoint, node.id = %node_id, version = env!("CARGO_PKG_VERSION"), "serving CSI");
    // Graceful shutdown waits for clients to hang up; a CO holding its connection open
    // must not keep the daemon alive, so give in-flight calls a moment, then exit.
    let grace = stop.grace();
    tokio::select! {
        served = serve(driver, listener, stop.stopped()) => served?,
        () = grace => tracing::info!("clients still connected after 2 s; exiting"),
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(path) = &args.plugin_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
