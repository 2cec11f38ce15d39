//! The `vol` command line, a client of the daemon's admin service: its arguments
//! ([`args`]), one function per command ([`commands`]), how answers are shown
//! ([`render`]), exit statuses ([`error`]) and the channel to the daemon
//! ([`client`]). Kept in a library so tests reach the parsing and formatting; the
//! `vol` binary only runs it.

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod render;

pub use args::{Cli, Command, Output};
pub use commands::run;
pub use error::{CliError, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE};
