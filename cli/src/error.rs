//! A failed command: its message and exit status, from a gRPC status or a local error.

use tonic::Code;

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: the operation failed.
pub const EXIT_ERROR: i32 = 1;
/// Exit status: the command line was wrong.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the named volume, snapshot or layer does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;

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

pub(crate) fn usage(message: impl Into<String>) -> CliError {
    CliError {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

pub(crate) fn from_status(s: tonic::Status) -> CliError {
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

/// A local file error: exit 3 when it does not exist.
pub(crate) fn file_err(path: &std::path::Path, e: &std::io::Error) -> CliError {
    CliError {
        code: if e.kind() == std::io::ErrorKind::NotFound {
            EXIT_NOT_FOUND
        } else {
            EXIT_ERROR
        },
        message: format!("{}: {e}", path.display()),
    }
}

pub(crate) fn io_err(e: std::io::Error) -> CliError {
    CliError {
        code: EXIT_ERROR,
        message: format!("write output: {e}"),
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
    fn a_message_that_says_what_to_do_first_gets_no_generic_hint() {
        let e = from_status(tonic::Status::failed_precondition(
            "layer k is used by volume a; delete those volumes first",
        ));
        assert_eq!(e.code, EXIT_ERROR);
        assert!(!e.message.contains("unmount"), "{}", e.message);
        let e = from_status(tonic::Status::failed_precondition("volume a is staged"));
        assert!(e.message.ends_with("(unmount, detach or unstage it first)"));
    }
}
