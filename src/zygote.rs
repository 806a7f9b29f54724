//! How the bridge starts the job's program for a local spawn: exec'd afresh, or
//! forked from the zygote.
//!
//! The zygote is one process of the program that the bridge execs once, with the
//! arguments, environment and working directory of the job's first spawn. It goes
//! through `init` like any spawned process and then waits for orders: each one
//! carries the five fds of a new process (monitor and control connections, its
//! TCP and Unix listening sockets, spawn arguments), and the zygote forks. The forked process
//! continues exactly as an exec'd one would from there, so a spawn skips the exec
//! and the dynamic loader, which are most of its cost. A spawn whose arguments,
//! environment or working directory differ from the zygote's is exec'd.
//!
//! The zygote dies with the bridge, and the monitors it forked die with it; it
//! reaps them itself (they report their process's end to the bridge directly).
//!
//! A node daemon runs a zygote of its own per job, started the same way; its
//! orders carry the three fds of a deployed process and a tag, and it reports
//! each forked monitor's end with that tag, as the node reports to its master.

use crate::{
    proto::{Environment, FDS_VAR},
    sys::{self, OsPid, WaitStatus},
};
use std::{
    ffi::OsStr,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    process::{self, Stdio},
};

/// What `FDS_VAR` starts with in the bridge's zygote; its socket's fd and the
/// bridge's OS pid follow.
const ZYGOTE_PREFIX: &str = "zygote,";
/// What `FDS_VAR` starts with in a node daemon's zygote; its socket's fd and the
/// node's OS pid follow.
const NODE_ZYGOTE_PREFIX: &str = "node-zygote,";

/// The fds a process gets from whoever starts it, in this order.
pub(crate) type StartFds = [RawFd; 5];

/// Execs the job's program with `env` in process group `group`, handing it `fds`
/// through `FDS_VAR` set to `fds_var`. The fds are made inheritable: the caller
/// closes them right after.
///
/// No other thread of the bridge starts processes, so the fds are made
/// inheritable here rather than between fork and exec: without a `pre_exec`
/// hook, std spawns with posix_spawn (vfork), which is cheaper than a fork.
pub(crate) fn exec_program(
    env: &Environment,
    group: OsPid,
    fds: &[RawFd],
    fds_var: &str,
) -> io::Result<process::Child> {
    let mut command = process::Command::new("/proc/self/exe");
    let mut args = env.args.iter().map(|a| OsStr::from_bytes(a));
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).env_clear();
    for (key, value) in passed_vars(env) {
        command.env(OsStr::from_bytes(key), OsStr::from_bytes(value));
    }
    command.env(FDS_VAR, fds_var);
    if !env.cwd.is_empty() {
        command.current_dir(OsStr::from_bytes(&env.cwd));
    }
    command.stdin(Stdio::null()).process_group(group.0);
    for &fd in fds {
        sys::clear_cloexec(fd)?;
    }
    command.spawn()
}

/// The variables a spawned process gets from `env`: all but this project's own
/// (apart from `CONSTELLATION_LOG`), sorted, as the new process sees them.
fn passed_vars(env: &Environment) -> Vec<(&[u8], &[u8])> {
    let mut vars: Vec<(&[u8], &[u8])> = env
        .vars
        .iter()
        .filter(|(key, _)| !key.starts_with(b"CONSTELLATION_") || key == b"CONSTELLATION_LOG")
        .map(|(key, value)| (&key[..], &value[..]))
        .collect();
    vars.sort_unstable();
    vars
}

/// The bridge's handle on its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    os_pid: OsPid,
    socket: OwnedFd,
    args: Vec<Vec<u8>>,
    vars: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Vec<u8>,
}

impl Zygote {
    /// Execs a zygote with `env` in process group `group`.
    pub(crate) fn start(env: &Environment, group: OsPid) -> io::Result<Zygote> {
        let (socket, theirs) = sys::seqpacket_pair()?;
        let fds_var = format!("{ZYGOTE_PREFIX}{},{}", theirs.as_raw_fd(), sys::getpid().0);
        let child = exec_program(env, group, &[theirs.as_raw_fd()], &fds_var)?;
        Ok(Zygote {
            os_pid: OsPid(child.id() as i32),
            socket,
            args: env.args.clone(),
            vars: passed_vars(env).into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            cwd: env.cwd.clone(),
        })
    }

    /// Its OS pid.
    pub(crate) fn os_pid(&self) -> OsPid {
        self.os_pid
    }

    /// Whether a process forked from it is the one `env` asks for.
    pub(crate) fn serves(&self, env: &Environment) -> bool {
        env.args == self.args
            && env.cwd == self.cwd
            && passed_vars(env).into_iter().eq(self.vars.iter().map(|(k, v)| (&k[..], &v[..])))
    }

    /// Orders a process forked with `fds`. Fails without blocking when the
    /// zygote is gone or has too many orders waiting; the caller then execs.
    pub(crate) fn fork(&self, fds: &StartFds) -> io::Result<()> {
        sys::send_fds(self.socket.as_raw_fd(), b"f", fds)
    }
}

/// A zygote's end of its socket, as `FDS_VAR` names it in the zygote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZygoteSocket {
    socket: RawFd,
    /// Who started it: the bridge, or a node daemon.
    parent: OsPid,
    /// Whether it reports each forked process's end on the socket: a node's
    /// zygote does; the bridge hears of them from their monitors.
    reports: bool,
}

/// In a process the bridge or a node daemon exec'd, `FDS_VAR`'s value names the
/// zygote's socket: parses it.
pub(crate) fn zygote_socket(fds_var: &str) -> Option<ZygoteSocket> {
    let (rest, reports) = match fds_var.strip_prefix(ZYGOTE_PREFIX) {
        Some(rest) => (rest, false),
        None => (fds_var.strip_prefix(NODE_ZYGOTE_PREFIX)?, true),
    };
    let (socket, parent) = rest.split_once(',')?;
    Some(ZygoteSocket { socket: socket.parse().ok()?, parent: OsPid(parent.parse().ok()?), reports })
}

/// Runs the zygote: waits for orders on its socket and forks for each. Returns
/// in each forked process with its start fds and the zygote's OS pid (its
/// parent); exits once its parent closes the socket.
pub(crate) fn serve(zygote: ZygoteSocket) -> (StartFds, OsPid) {
    if sys::set_cloexec(zygote.socket).is_err() || sys::die_with_parent(libc::SIGKILL, zygote.parent).unwrap_or(true) {
        sys::exit_now(1);
    }
    // SAFETY: its parent passed this fd to this process alone.
    let socket = unsafe { OwnedFd::from_raw_fd(zygote.socket) };
    sys::find_cgroup_parents();
    let me = sys::getpid();
    if !zygote.reports {
        // The kernel reaps the forked monitors: their ends reach the bridge
        // through their connections.
        sys::ignore_signal(libc::SIGCHLD);
        loop {
            let (_, fds) = next_order(&socket);
            if let Forked::Child(fds) = fork_process(fds) {
                drop(socket);
                sys::default_signal(libc::SIGCHLD);
                return (fds, me);
            }
        }
    }
    let Ok(signals) = sys::ChildSignals::open() else { sys::exit_now(1) };
    let mut forked: Vec<(OsPid, u64)> = Vec::new();
    loop {
        let Ok([orders, ended]) =
            sys::poll([(socket.as_raw_fd(), libc::POLLIN), (signals.as_raw_fd(), libc::POLLIN)], None)
        else {
            sys::exit_now(1)
        };
        if ended != 0 {
            signals.clear();
            while let Some((pid, status)) = sys::reap_any() {
                let Some(index) = forked.iter().position(|&(p, _)| p == pid) else { continue };
                let (_, tag) = forked.swap_remove(index);
                report(&socket, tag, status.unwrap_or(WaitStatus::Signaled(libc::SIGKILL)));
            }
        }
        if orders != 0 {
            let (tag, fds) = next_order(&socket);
            match fork_process(fds) {
                Forked::Child(fds) => {
                    drop(socket);
                    signals.close();
                    return (fds, me);
                }
                Forked::Parent(pid) => forked.push((pid, tag)),
                Forked::Failed => report(&socket, tag, WaitStatus::Exited(1)),
            }
        }
    }
}

/// Waits for the next order: its tag (a node's number for the process) and the
/// process's start fds, five from the bridge or three from a node (whose
/// processes connect to their bridge themselves). Exits once the socket has
/// closed.
fn next_order(socket: &OwnedFd) -> (u64, StartFds) {
    let mut order = [0u8; 8];
    loop {
        let (len, fds) = match sys::recv_fds(socket.as_raw_fd(), &mut order) {
            Ok(Some(received)) => received,
            Ok(None) => sys::exit_now(0),
            Err(error) => {
                let _ = sys::write_all(2, format!("constellation: the zygote lost its parent: {error}\n").as_bytes());
                sys::exit_now(1)
            }
        };
        let tag = if len == order.len() { u64::from_le_bytes(order) } else { 0 };
        let fds: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
        match fds[..] {
            [monitor, control, listener, local, start] => return (tag, [monitor, control, listener, local, start]),
            [listener, start, lease] => return (tag, [-1, -1, listener, start, lease]),
            _ => {
                for fd in fds {
                    // SAFETY: recv_fds made these fds; nothing else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
}

/// Which side of a zygote's fork this is.
enum Forked {
    Child(StartFds),
    Parent(OsPid),
    Failed,
}

/// Forks the process that `fds` start; in the zygote, closes its copies of them.
fn fork_process(fds: StartFds) -> Forked {
    let close = || {
        for fd in fds.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: next_order handed these fds over; nothing else owns them.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    };
    // SAFETY: the zygote never starts a thread.
    match unsafe { sys::fork() } {
        Ok(sys::Fork::Child) => Forked::Child(fds),
        Ok(sys::Fork::Parent(pid)) => {
            close();
            Forked::Parent(pid)
        }
        Err(error) => {
            // Closing the fds closes the process's connections: its bridge
            // counts it as ended.
            close();
            let _ = sys::write_all(2, format!("constellation: the zygote could not fork: {error}\n").as_bytes());
            Forked::Failed
        }
    }
}

/// The length of a node zygote's report: the process's tag, whether it was
/// killed by a signal, and its exit code or signal.
const REPORT_LEN: usize = 13;

/// Tells the node that the process tagged `tag` has ended; exits if the node
/// is gone.
fn report(socket: &OwnedFd, tag: u64, status: WaitStatus) {
    let mut bytes = [0u8; REPORT_LEN];
    bytes[..8].copy_from_slice(&tag.to_le_bytes());
    let (killed, value) = match status {
        WaitStatus::Exited(code) => (0, code),
        WaitStatus::Signaled(signal) => (1, signal),
    };
    bytes[8] = killed;
    bytes[9..].copy_from_slice(&value.to_le_bytes());
    if sys::send_packet(socket.as_raw_fd(), &bytes).is_err() {
        sys::exit_now(1);
    }
}

/// Reads a report of a node's zygote: the tag of the process and how it ended,
/// or `None` once the zygote has gone.
pub(crate) fn read_report(socket: RawFd) -> io::Result<Option<(u64, WaitStatus)>> {
    let mut bytes = [0u8; REPORT_LEN];
    let Some((len, _)) = sys::recv_fds(socket, &mut bytes)? else { return Ok(None) };
    if len != REPORT_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a zygote's report of {len} bytes")));
    }
    let tag = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
    let value = i32::from_le_bytes(bytes[9..].try_into().expect("four bytes"));
    Ok(Some((tag, if bytes[8] == 0 { WaitStatus::Exited(value) } else { WaitStatus::Signaled(value) })))
}

/// The `FDS_VAR` value of a zygote a node daemon (OS pid `node`) starts with
/// `socket` as the zygote's end.
pub(crate) fn node_zygote_fds_var(socket: RawFd, node: OsPid) -> String {
    format!("{NODE_ZYGOTE_PREFIX}{socket},{}", node.0)
}
