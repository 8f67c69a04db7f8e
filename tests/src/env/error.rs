//! The one error type of the test environment.

use std::path::PathBuf;

/// Why the test environment could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A tool the environment needs is not installed; `hint` says how to install it.
    #[error("{tool} not found: {hint}")]
    Missing {
        /// The executable looked for, e.g. `containerd`.
        tool: String,
        /// What to run to install it, e.g. `run deploy/local/setup.sh (apt-get install -y containerd runc)`.
        hint: String,
    },
    /// A daemon exited early or did not become ready in time.
    #[error("{what} did not start: {reason}\n--- last lines of {log_path} ---\n{log}")]
    Start {
        /// The daemon, e.g. `containerd`.
        what: String,
        /// What went wrong: the exit status, or the readiness timeout and the last probe error.
        reason: String,
        /// The daemon's log file (its stdout and stderr).
        log_path: PathBuf,
        /// The tail of that log file.
        log: String,
    },
    /// A command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for humans.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done, e.g. `writing /tmp/x/containerd/config.toml`.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Results of the test environment.
pub type Result<T, E = EnvError> = std::result::Result<T, E>;

/// Wraps an [`std::io::Error`] with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvError {
    let context = context.into();
    move |source| EnvError::Io { context, source }
}
