//! `vol`: manage Stowage volumes from a shell. Parses the command line and runs it
//! against the daemon; everything else lives in the `stowage_cli` library.

use clap::Parser;
use stowage_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = run(&cli, &mut stdout).await {
        eprintln!("vol: {e}");
        std::process::exit(e.code);
    }
}
