//! `stowage-overlay`: a fuse-overlayfs-compatible overlay mount program.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = fuse_overlay::overlay::cli::Cli::parse();
    let default = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    fuse_overlay::overlay::cli::run(cli)
}
