//! The library's errors: what stops a run, each saying what was wrong and what to do. A
//! connection that loses its way mid-run does not stop the run; it ends, and the run
//! reports it in `RunResult::warnings`.

use std::io;
use std::path::PathBuf;

use resp::ClientError;

use crate::config::ConfigError;
use crate::timeline::TimelineError;
use crate::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No target accepted a connection.
    #[error("cannot reach {addr}: {reason} ({hint})")]
    Unreachable {
        addr: String,
        reason: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    RunDir(#[from] reports::run::RunError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    /// A fleet run's own problem (`--pair`, etcd), or one pair's, named.
    #[error("{0}")]
    Fleet(String),
}

/// An i/o error as a short lower-case phrase: "connection refused", "timed out".
pub fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => {
            // "Connection refused (os error 111)" -> "connection refused"
            let text = e.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => "unknown error".into(),
            }
        }
    }
}

pub fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::Io(io) => describe_io_error(io),
        ClientError::Timeout => "timed out".into(),
        ClientError::Closed => "the connection was closed".into(),
        ClientError::Protocol(p) => format!("it does not speak RESP ({p})"),
        ClientError::Auth(why) => format!("authentication failed ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_short_phrases() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io_error(&refused), "connection refused");
        let other = io::Error::other("Something odd (os error 99)");
        assert_eq!(describe_io_error(&other), "something odd");
        let e = Error::Unreachable {
            addr: "127.0.0.1:7401".into(),
            reason: describe_io_error(&refused),
            hint: "is the pair up?",
        };
        assert_eq!(
            e.to_string(),
            "cannot reach 127.0.0.1:7401: connection refused (is the pair up?)"
        );
    }
}
