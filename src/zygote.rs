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

use crate::{
    proto::{Environment, FDS_VAR},
    sys::{self, OsPid},
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

/// What `FDS_VAR` starts with in the zygote; its socket's fd and the bridge's OS
/// pid follow.
const ZYGOTE_PREFIX: &str = "zygote,";

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

/// In a process the bridge exec'd, `FDS_VAR`'s value names the zygote's socket:
/// parses it.
pub(crate) fn zygote_socket(fds_var: &str) -> Option<(RawFd, OsPid)> {
    let (socket, bridge) = fds_var.strip_prefix(ZYGOTE_PREFIX)?.split_once(',')?;
    Some((socket.parse().ok()?, OsPid(bridge.parse().ok()?)))
}

/// Runs the zygote: waits for orders on `socket` and forks for each. Returns in
/// each forked process with its start fds and the zygote's OS pid (its parent);
/// exits once the bridge closes the socket.
pub(crate) fn serve(socket: RawFd, bridge: OsPid) -> (StartFds, OsPid) {
    if sys::set_cloexec(socket).is_err() || sys::die_with_parent(libc::SIGKILL, bridge).unwrap_or(true) {
        sys::exit_now(1);
    }
    // SAFETY: the bridge passed this fd to this process alone.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // The kernel reaps the forked monitors: their ends reach the bridge through
    // their connections.
    sys::ignore_signal(libc::SIGCHLD);
    sys::find_cgroup_parents();
    let zygote = sys::getpid();
    let mut order = [0u8; 1];
    loop {
        let fds = match sys::recv_fds(socket.as_raw_fd(), &mut order) {
            Ok(Some((_, fds))) => fds,
            Ok(None) => sys::exit_now(0),
            Err(error) => {
                let _ = sys::write_all(2, format!("constellation: the zygote lost its bridge: {error}\n").as_bytes());
                sys::exit_now(1)
            }
        };
        let Ok(fds) = <[OwnedFd; 5]>::try_from(fds) else {
            continue;
        };
        // SAFETY: the zygote never starts a thread.
        match unsafe { sys::fork() } {
            Ok(sys::Fork::Child) => {
                drop(socket);
                sys::default_signal(libc::SIGCHLD);
                return (fds.map(IntoRawFd::into_raw_fd), zygote);
            }
            Ok(sys::Fork::Parent(_)) => drop(fds),
            Err(error) => {
                // Dropping the fds closes the process's connections: the bridge
                // counts it as ended.
                let _ = sys::write_all(2, format!("constellation: the zygote could not fork: {error}\n").as_bytes());
            }
        }
    }
}
