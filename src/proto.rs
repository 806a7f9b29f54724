//! The messages between a process, its monitor and the job's bridge, and the
//! arguments a spawned process starts from.

use crate::{ExitStatus, Pid, RegisterError, Resources, SpawnError, SpawnOptions, SupervisorEvent};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Duration};

/// Frame kinds on a process's control connection to the bridge and on a
/// monitor's connection to the bridge: the payload is one bincode value.
pub(crate) const KIND_MESSAGE: u8 = 1;

/// Start a process running the closure `arg` through the trampoline at `entry`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SpawnRequest {
    pub(crate) id: u64,
    pub(crate) resources: Resources,
    pub(crate) options: SpawnOptions,
    /// Set up a monitor of the new process with this id, before it can end.
    pub(crate) monitor: Option<u64>,
    pub(crate) entry: isize,
    pub(crate) arg: Vec<u8>,
    pub(crate) env: Environment,
}

/// What a process asks of the bridge. Requests with an `id` are answered by a
/// reply carrying the same `id`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Start a process (see [`SpawnRequest`]).
    Spawn(SpawnRequest),
    /// Show a supervisor's report on the job's output.
    Supervisor { event: SupervisorEvent },
    /// Tell me when `pid` has ended (at once if it already has, or never existed).
    Watch { pid: Pid },
    /// Send `Reply::Down { id, .. }` when `pid` ends.
    Monitor { id: u64, pid: Pid },
    /// Cancel my monitors of `pid`.
    Demonitor { pid: Pid },
    /// Link me and `pid`.
    Link { pid: Pid },
    /// Remove the link between me and `pid`.
    Unlink { pid: Pid },
    /// Whether exit signals reach me as `Reply::Exit` instead of ending me.
    TrapExits { on: bool },
    /// Kill `pid` now.
    Kill { pid: Pid },
    /// Ask `pid` to end (SIGTERM), then kill it after `timeout` (never if `None`).
    Shutdown { pid: Pid, timeout: Option<Duration> },
    /// Register me under `name`.
    Register { id: u64, name: String },
    /// Release `name` if it is mine.
    Unregister { name: String },
    /// Which process holds `name`?
    Whereis { id: u64, name: String },
    /// How many processes of `resources` the job's machines hold now.
    Capacity { id: u64, resources: Resources },
    /// Deliver a value to a mailbox of another process.
    Mail { to: MailTo, mailbox: String, type_name: String, value: Vec<u8> },
}

/// Where a mailbox value goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MailTo {
    Pid(Pid),
    /// The process registered under this name when the value is sent.
    Name(String),
}

/// What the bridge tells a process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The answer to `Request::Spawn`, by its `id`.
    Spawned { id: u64, result: Result<Pid, SpawnError> },
    /// A watched process has ended.
    Ended { pid: Pid },
    /// A monitored process has ended (`Request::Monitor { id, .. }`).
    Down { id: u64, pid: Pid, status: ExitStatus },
    /// A linked process has ended, and this process traps exits.
    Exit { pid: Pid, status: ExitStatus },
    /// The answer to `Request::Register { id, .. }`.
    Registered { id: u64, result: Result<(), RegisterError> },
    /// The answer to `Request::Whereis { id, .. }`.
    Found { id: u64, pid: Option<Pid> },
    /// The answer to `Request::Capacity { id, .. }`.
    Capacity { id: u64, count: u64 },
    /// A value for one of this process's mailboxes.
    Mail { from: Pid, mailbox: String, type_name: String, value: Vec<u8> },
}

impl Reply {
    /// The id of the request this answers, if it answers one.
    pub(crate) fn call_id(&self) -> Option<u64> {
        match self {
            Reply::Spawned { id, .. }
            | Reply::Down { id, .. }
            | Reply::Registered { id, .. }
            | Reply::Found { id, .. }
            | Reply::Capacity { id, .. } => Some(*id),
            Reply::Ended { .. } | Reply::Exit { .. } | Reply::Mail { .. } => None,
        }
    }
}

/// What the bridge tells a monitor to do with its process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Kill the process now; report `status` as how it ended.
    Kill { status: ExitStatus },
    /// Send the process SIGTERM, and SIGKILL after `timeout` (never if `None`);
    /// report `status` unless it panicked.
    Terminate { timeout: Option<Duration>, status: ExitStatus },
    /// Bytes for the process's stdin (a deployed job's top process); empty: the
    /// end of its input.
    Stdin { data: Vec<u8> },
    /// The bridge is alive (on a cluster, sent every heartbeat interval).
    Heartbeat,
}

/// What a monitor tells the bridge about its process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Bytes the process wrote to fd 1 or 2; empty when that fd was closed.
    Output {
        fd: u8,
        #[serde(with = "crate::codec::bulk_bytes")]
        data: Vec<u8>,
    },
    /// The process has ended; this is the monitor's last message but for
    /// `CgroupFree`.
    Exited { status: ExitStatus },
    /// After `Exited`: the process's cgroup is left in place, empty, for the
    /// bridge to reuse.
    CgroupFree,
    /// The monitor is alive (on a cluster, sent every heartbeat interval).
    Heartbeat,
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
            vars: std::env::vars_os().map(|(k, v)| (k.into_vec(), v.into_vec())).collect(),
            cwd: std::env::current_dir().map(|d| d.into_os_string().into_vec()).unwrap_or_default(),
        }
    }
}

/// Everything a process needs to start: who it is, who its parent is, the job's
/// token, and (for a spawned process) the closure to run. Its `Pid` is its
/// listener's address with this incarnation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    pub(crate) incarnation: u64,
    pub(crate) parent: Option<Pid>,
    pub(crate) resources: Resources,
    pub(crate) token: u64,
    /// The OS pid of the monitor's parent: the bridge on one machine; 0 on a
    /// cluster, where it is the node daemon that exec'd the process.
    pub(crate) bridge_os_pid: i32,
    /// On a cluster, where the bridge accepts the monitor's and the process's
    /// connections (each opened with a [`Hello`]).
    pub(crate) bridge_addr: Option<SocketAddr>,
    /// On a cluster, how the monitor and the bridge watch each other: each sends
    /// a heartbeat every `Heartbeats::interval`, and the monitor kills its process
    /// when it has heard nothing from the bridge for `Heartbeats::fence`.
    pub(crate) heartbeats: Option<Heartbeats>,
    /// The name of the process's cgroup (made by the bridge ahead of time, or by
    /// the process if it does not exist yet).
    pub(crate) cgroup: String,
    /// The trampoline's address relative to `spawn::base` and the closure's bytes.
    pub(crate) closure: Option<(isize, Vec<u8>)>,
}

/// The application heartbeats between a deployed job's bridge and its monitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeats {
    /// How often each side says it is alive.
    pub interval: Duration,
    /// How long a monitor goes without hearing from its bridge before it kills
    /// its process.
    pub fence: Duration,
    /// How much longer the bridge waits after `fence` before it declares a
    /// silent process `Lost` (covers killing and reaping it).
    pub margin: Duration,
}

/// The first frame on a connection a process opens to a remote bridge.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) token: u64,
    pub(crate) incarnation: u64,
    /// Where the process accepts channel connections (with `incarnation`, its `Pid`).
    pub(crate) addr: SocketAddr,
    /// Whether this is the monitor's connection (else the process's control one).
    pub(crate) monitor: bool,
}

/// The environment variable naming the fds a spawned process inherits:
/// `monitor,control,listener,start` on one machine; `-1,-1,listener,start,lease`
/// from a node daemon (see `crate::cluster`).
pub(crate) const FDS_VAR: &str = "CONSTELLATION_FDS";
/// The environment variable that selects JSON output.
pub(crate) const FORMAT_VAR: &str = "CONSTELLATION_FORMAT";
