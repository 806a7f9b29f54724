//! `ExitStatus`: how a process ended, as the monitor saw it and as people read it.

use crate::{Mem, Pid};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a process of the job ended.
///
/// Its `Display` reads as a person writes it: "exit code 7", "killed by signal 9",
/// "panicked: boom".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The process returned from its closure (or `main`), or called `exit(0)`.
    Success,
    /// The process exited with this non-zero code.
    Code(i32),
    /// The process was killed by this signal.
    Signal(i32),
    /// The process panicked with this message.
    Panicked(String),
    /// The process was stopped for using more memory than its `Resources` allow.
    MemoryExceeded(Mem),
    /// The process was killed because the process it was linked to (or that shut it
    /// down) ended.
    KilledBy(Pid),
    /// The process's node, or the connection to it, was lost.
    Lost,
    /// There was no such process, or it had already gone.
    NoProc,
}

impl ExitStatus {
    /// Whether this is [`ExitStatus::Success`].
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Success)
    }

    /// The exit code a shell would see for this status: 0, the code, 128 + the
    /// signal, 101 for a panic (as Rust's runtime exits), and 1 otherwise.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Code(code) => *code,
            ExitStatus::Signal(signal) => 128 + signal,
            ExitStatus::Panicked(_) => 101,
            ExitStatus::KilledBy(_) | ExitStatus::MemoryExceeded(_) => 128 + libc::SIGKILL,
            ExitStatus::Lost | ExitStatus::NoProc => 1,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Success => f.write_str("exit code 0"),
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
            ExitStatus::Panicked(message) => write!(f, "panicked: {message}"),
            ExitStatus::MemoryExceeded(limit) => {
                write!(f, "killed for exceeding its memory limit of {limit}")
            }
            ExitStatus::KilledBy(pid) => write!(f, "killed by link to {pid}"),
            ExitStatus::Lost => f.write_str("lost with its node"),
            ExitStatus::NoProc => f.write_str("no such process"),
        }
    }
}
