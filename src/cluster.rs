//! What the cluster daemons (crate `constellation-fabric`) need from the core: the
//! messages between a deployed job's bridge and the master's scheduler, how a
//! node daemon starts a process of this binary, and the probe that learns a
//! binary's top-level `Resources`.
//!
//! Not part of the user-facing API: it changes with the daemons.

pub use crate::proto::Heartbeats;
use crate::{bridge, proto::FDS_VAR, runtime, sys, zygote, Placement, Resources, SpawnError};
use serde::{Deserialize, Serialize};
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

/// What a job's bridge asks of the master's scheduler.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToScheduler {
    /// Start a process somewhere with room for `resources`. If nothing has room
    /// now: refuse with `NoCapacity` unless `queue`, else answer `Queued` and
    /// place it when something frees. `id` names the process in the answers.
    Place { id: u64, resources: Resources, queue: bool, placement: Placement, image: ProcessImage },
    /// Give up these queued placements: answer each with `NoCapacity`.
    Withdraw { ids: Vec<u64> },
    /// How many processes of `resources` the cluster holds now (answered by
    /// `Capacity` with the same `id`).
    Capacity { id: u64, resources: Resources },
}

/// How a node starts one process: this job's binary with these arguments,
/// environment variables and start record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessImage {
    /// The encoded start record, handed to the process in a memfd.
    pub start: Vec<u8>,
    /// `argv`, starting with the program's name.
    pub args: Vec<Vec<u8>>,
    /// The environment, as (name, value) pairs.
    pub vars: Vec<(Vec<u8>, Vec<u8>)>,
    /// The process's cgroup, which the node removes once the process has gone.
    pub cgroup: String,
}

/// What the master's scheduler tells a job's bridge.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromScheduler {
    /// Process `id` was started; it accepts channel connections at `addr`.
    Placed { id: u64, addr: SocketAddr },
    /// Nothing has room for process `id` now; it waits for room.
    Queued { id: u64 },
    /// Process `id` could not be started.
    Refused { id: u64, error: SpawnError },
    /// The answer to `ToScheduler::Capacity { id, .. }`.
    Capacity { id: u64, count: u64 },
    /// The monitor of process `id` has ended (with exit `code`, or killed by
    /// `signal`), or its node was lost (`lost`), and the process is gone too.
    Ended { id: u64, code: Option<i32>, signal: Option<i32>, lost: bool },
}

/// What a deployed job's bridge is given.
pub struct Deployment {
    /// The connection to the master's scheduler (frames of `ToScheduler` out,
    /// `FromScheduler` in).
    pub scheduler: UnixStream,
    /// The address the bridge accepts its processes' connections on (port 0 for
    /// any); nodes must be able to reach it.
    pub bind: IpAddr,
    /// JSON lines instead of the human format.
    pub json: bool,
    /// `argv` of the top process, starting with the program's name.
    pub args: Vec<Vec<u8>>,
    /// The environment of the top process.
    pub vars: Vec<(Vec<u8>, Vec<u8>)>,
    /// The top process's resources, as its `init` asks for them.
    pub resources: Resources,
    /// Where the top process's stdin comes from (its end closes the input).
    pub stdin: Option<UnixStream>,
    /// How the bridge and its processes' monitors watch each other.
    pub heartbeats: Heartbeats,
    /// Where the job's output goes, in order: called with 1 (stdout) or 2
    /// (stderr) and the bytes, as `cargo run` would write them.
    pub output: OutputSink,
}

/// Where a deployed job's output goes: called with 1 (stdout) or 2 (stderr) and
/// the bytes.
pub type OutputSink = Box<dyn FnMut(u8, &[u8]) + Send>;

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment").field("bind", &self.bind).field("json", &self.json).finish_non_exhaustive()
    }
}

/// Runs a deployed job's bridge until the job has ended, giving its output to
/// `deployment.output`; returns the top process's exit code.
pub fn run_bridge(deployment: Deployment) -> i32 {
    bridge::run_deployed(deployment)
}

/// Appends one frame holding `value` to `buf` (the format of every connection).
pub fn append_frame<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> io::Result<()> {
    crate::codec::append_frame(buf, crate::proto::KIND_MESSAGE, value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The value in the first whole frame of `buf` and the frame's length, or `None`
/// if no frame is complete yet.
pub fn next_frame<T: serde::de::DeserializeOwned>(buf: &[u8]) -> io::Result<Option<(T, usize)>> {
    let invalid = |e: crate::codec::CodecError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    match crate::codec::next_frame(buf).map_err(invalid)? {
        None => Ok(None),
        Some(frame) => Ok(Some((crate::codec::decode(&buf[frame.payload]).map_err(invalid)?, frame.len))),
    }
}

/// Encodes a value on its own.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    crate::codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Decodes a value encoded by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    crate::codec::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The environment variable (name, value) that makes a binary started by a node
/// daemon run as a process of a deployed job, given the fds it inherits: its
/// channel listener, its start record and the lease pipe.
pub fn spawned_fds_var(listener: RawFd, start: RawFd, lease: RawFd) -> (&'static str, String) {
    (FDS_VAR, format!("-1,-1,{listener},{start},{lease}"))
}

/// The environment variable (set to `1`) that makes a process's CPU share also
/// a hard quota, for a node daemon to set.
pub const CPU_QUOTA_VAR: &str = runtime::CPU_QUOTA_VAR;

/// The environment variable that makes a binary print the `Resources` its
/// `init` asks for, and exit.
pub const PROBE_VAR: &str = runtime::PROBE_VAR;

/// The `Resources` in a probed binary's stdout, if its `init` answered.
pub fn parse_probe_answer(stdout: &[u8]) -> Option<Resources> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find_map(|line| line.strip_prefix(runtime::PROBE_ANSWER))?;
    serde_json::from_str(line).ok()
}

/// A listening socket on an ephemeral port of `ip`, with a long backlog.
pub fn bind_ephemeral(ip: IpAddr) -> io::Result<std::net::TcpListener> {
    sys::bind_ephemeral(ip)
}

/// A memfd holding `bytes`, for a process to read its start record from.
pub fn memfd_with(bytes: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    sys::memfd_with(bytes)
}

/// Makes `fd` inheritable across exec (for fds made for one child alone).
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    sys::clear_cloexec(fd)
}

/// Removes a process's cgroup (and any below it), if it exists.
pub fn remove_cgroup(name: &str) {
    sys::remove_cgroups(name);
}

/// Nanoseconds on the machine-wide monotonic clock, the clock of lease deadlines.
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

/// Eight random bytes from the kernel.
pub fn random_u64() -> u64 {
    sys::random_u64()
}

/// The environment variable (name, value) that makes a binary started by a node
/// daemon a zygote of a deployed job: it goes through `init` and then forks one
/// process for each [`order_fork`] on its end of a [`zygote_socket_pair`]
/// (`socket`), reporting each one's end there ([`read_fork_report`]). It dies
/// with the node daemon, and the processes it forked die with it.
pub fn zygote_fds_var(socket: RawFd) -> (&'static str, String) {
    (FDS_VAR, zygote::node_zygote_fds_var(socket, sys::getpid()))
}

/// A connected pair of close-on-exec sockets for a node's zygote: the node keeps
/// one end, the zygote inherits the other.
pub fn zygote_socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::seqpacket_pair()
}

/// Orders a node's zygote to fork a process that starts from `fds` (its channel
/// listener, its start record and the lease pipe, as in [`spawned_fds_var`]),
/// tagged `tag` in the report of its end. Fails without blocking when the
/// zygote is gone or has too many orders waiting.
pub fn order_fork(socket: RawFd, tag: u64, fds: [RawFd; 3]) -> io::Result<()> {
    sys::send_fds(socket, &tag.to_le_bytes(), &fds)
}

/// How a process forked by a node's zygote ended, as the zygote reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkReport {
    /// The tag its order carried.
    pub tag: u64,
    /// Its monitor's exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed its monitor, if one did.
    pub signal: Option<i32>,
}

/// Waits for a node's zygote to report a forked process's end. `None` once the
/// zygote has gone (and with it every process it forked that had not ended).
pub fn read_fork_report(socket: RawFd) -> io::Result<Option<ForkReport>> {
    Ok(zygote::read_report(socket)?.map(|(tag, status)| match status {
        sys::WaitStatus::Exited(code) => ForkReport { tag, code: Some(code), signal: None },
        sys::WaitStatus::Signaled(signal) => ForkReport { tag, code: None, signal: Some(signal) },
    }))
}
