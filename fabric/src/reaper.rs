//! Starting and reaping the daemon's children. Every child is started here, under
//! one lock, so the fds made inheritable for one child are never inherited by
//! another started at the same moment on another thread, and a single thread
//! reaps them all and tells each its owner how it ended.

use parking_lot::Mutex;
use std::{collections::HashMap, io, os::fd::RawFd, process::Command, sync::OnceLock, time::Duration};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

type OnExit = Box<dyn FnOnce(i32, Ended) + Send>;

static CHILDREN: Mutex<Option<HashMap<i32, OnExit>>> = Mutex::new(None);
static REAPER: OnceLock<()> = OnceLock::new();

/// Starts `command`, letting it inherit `inherit` (fds made for it alone), and
/// calls `on_exit` with its OS pid on the reaper thread once it has ended.
/// Returns its OS pid.
pub(crate) fn spawn(
    command: &mut Command,
    inherit: &[RawFd],
    on_exit: impl FnOnce(i32, Ended) + Send + 'static,
) -> io::Result<i32> {
    REAPER.get_or_init(|| {
        std::thread::Builder::new().name("reaper".into()).spawn(reap_forever).expect("starting the reaper thread");
    });
    let mut children = CHILDREN.lock();
    for &fd in inherit {
        constellation::cluster::clear_cloexec(fd)?;
    }
    // Without a pre_exec hook std spawns with posix_spawn, so nothing runs in the
    // child between fork and exec.
    let spawned = command.spawn();
    for &fd in inherit {
        set_cloexec(fd);
    }
    let pid = spawned?.id() as i32;
    children.get_or_insert_with(HashMap::new).insert(pid, Box::new(on_exit));
    Ok(pid)
}

/// Sends `signal` to child `pid` if it has not been reaped (so never to a reused pid).
pub(crate) fn signal(pid: i32, signal: i32) {
    let children = CHILDREN.lock();
    if children.as_ref().is_some_and(|c| c.contains_key(&pid)) {
        // SAFETY: kill takes plain integers; the pid is a live or zombie child of ours.
        unsafe { libc::kill(pid, signal) };
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd number is memory-safe.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn reap_forever() {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int to write the wait status to.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 {
            // No children now (ECHILD) or interrupted: look again shortly.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let ended = if libc::WIFEXITED(status) {
            Ended { code: Some(libc::WEXITSTATUS(status)), signal: None }
        } else {
            Ended { code: None, signal: Some(libc::WTERMSIG(status)) }
        };
        let on_exit = CHILDREN.lock().as_mut().and_then(|c| c.remove(&pid));
        if let Some(on_exit) = on_exit {
            on_exit(pid, ended);
        }
    }
}
