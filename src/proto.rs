//! The messages between a process, its monitor and the job's bridge, and the
//! arguments a spawned process starts from.

use crate::{ExitStatus, Pid, Resources, SpawnError};
use serde::{Deserialize, Serialize};

/// Frame kinds on a process's control connection to the bridge and on a
/// monitor's connection to the bridge: the payload is one bincode value.
pub(crate) const KIND_MESSAGE: u8 = 1;

/// What a process asks of the bridge.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Start a process running the closure `arg` through the trampoline at `entry`.
    Spawn {
        id: u64,
        resources: Resources,
        try_only: bool,
        entry: isize,
        arg: Vec<u8>,
        env: Environment,
    },
    /// Tell me when `pid` has ended (at once if it already has, or never existed).
    Watch { pid: Pid },
}

/// What the bridge tells a process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The answer to `Request::Spawn { id, .. }`.
    Spawned {
        id: u64,
        result: Result<Pid, SpawnError>,
    },
    /// A watched process has ended.
    Ended { pid: Pid },
}

/// What a monitor tells the bridge about its process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Bytes the process wrote to fd 1 or 2; empty when that fd was closed.
    Output { fd: u8, data: Vec<u8> },
    /// The process has ended; this is the monitor's last message.
    Exited { status: ExitStatus },
}

/// The working directory, arguments and environment a spawned process inherits
/// from its parent at the moment of the spawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Environment {
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) vars: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) cwd: Vec<u8>,
}

impl Environment {
    /// This process's own.
    pub(crate) fn current() -> Environment {
        use std::os::unix::ffi::OsStringExt;
        Environment {
            args: std::env::args_os().map(OsStringExt::into_vec).collect(),
            vars: std::env::vars_os()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            cwd: std::env::current_dir()
                .map(|d| d.into_os_string().into_vec())
                .unwrap_or_default(),
        }
    }
}

/// Everything a process needs to start: who it is, who its parent is, the job's
/// token, and (for a spawned process) the closure to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    pub(crate) pid: Pid,
    pub(crate) parent: Option<Pid>,
    pub(crate) resources: Resources,
    pub(crate) token: u64,
    /// The bridge's OS pid: the monitor's parent.
    pub(crate) bridge_os_pid: i32,
    /// The trampoline's address relative to `spawn::base` and the closure's bytes.
    pub(crate) closure: Option<(isize, Vec<u8>)>,
}

/// The environment variable naming the fds a spawned process inherits:
/// `monitor,control,listener,start`.
pub(crate) const FDS_VAR: &str = "CONSTELLATION_FDS";
/// The environment variable that selects JSON output.
pub(crate) const FORMAT_VAR: &str = "CONSTELLATION_FORMAT";
