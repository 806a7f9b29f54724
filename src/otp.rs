//! Erlang/OTP's signals between processes, carried by the job's bridge: monitors,
//! links and exit trapping, killing and shutting down, and the name registry.
//!
//! # Semantics (as in OTP)
//! - [`monitor`] resolves to a [`Down`] once the process ends; at once, with
//!   [`ExitStatus::NoProc`], if it has already gone or never existed.
//! - [`link`] binds two processes: when one ends with anything but success, the
//!   other is killed too (its status names the link), unless it called
//!   [`trap_exits(true)`](trap_exits); then it receives an [`Exit`] on [`exits`]
//!   instead, for normal ends as well. Linking to a process already gone is an
//!   immediate `NoProc` exit signal.
//! - [`kill`] ends a process now (SIGKILL); [`shutdown`] asks it to end (SIGTERM,
//!   which [`on_shutdown`] hooks can act on) and kills it after a timeout.
//! - [`register`] names the calling process within the job; the name is released
//!   when the process ends. [`whereis`] finds the process holding a name.

use crate::{
    proto::{Reply, Request},
    runtime, ExitStatus, Pid, Resources, Spawn,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::Duration,
};

/// A monitored process has ended: which one, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The process that ended.
    pub pid: Pid,
    /// How it ended ([`ExitStatus::NoProc`] if it was gone before the monitor).
    pub status: ExitStatus,
}

/// The exit signal of a linked process, received by a process that traps exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The linked process that ended.
    pub pid: Pid,
    /// How it ended.
    pub status: ExitStatus,
}

/// Why a name could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterError {
    /// Another live process of the job holds the name.
    Taken {
        /// The name asked for.
        name: String,
        /// The process holding it.
        by: Pid,
    },
    /// The job's bridge is gone.
    BridgeLost,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Taken { name, by } => {
                write!(f, "the name {name:?} is already registered by {by}")
            }
            RegisterError::BridgeLost => f.write_str("the job's bridge is gone"),
        }
    }
}

impl std::error::Error for RegisterError {}

/// Waits for the answer to request `id`; `None` if the bridge is gone.
fn poll_call(id: u64, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
    runtime::with_net(|net| net.poll_call(id, cx))
}

/// The future of [`monitor`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Monitor {
    pid: Pid,
    id: u64,
}

/// Watches `pid`: resolves to a [`Down`] once it ends.
///
/// The monitor is set up at once, whether or not the future is polled yet.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let child = spawn(Resources::default(), FnOnce!(|_parent: Pid| std::process::exit(7))).block().unwrap();
/// let down = monitor(child).block();
/// assert_eq!(down.status, ExitStatus::Code(7));
/// # }
/// ```
///
/// # Panics
/// If [`init`](crate::init) has not been called.
pub fn monitor(pid: Pid) -> Monitor {
    let id = runtime::with_net(|net| net.call(|id| Request::Monitor { id, pid }));
    Monitor { pid, id }
}

impl Monitor {
    /// The monitor of `pid` whose answer comes to call slot `id`.
    pub(crate) fn from_slot(pid: Pid, id: u64) -> Monitor {
        Monitor { pid, id }
    }
}

impl Future for Monitor {
    type Output = Down;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Down> {
        poll_call(self.id, cx).map(|reply| match reply {
            Some(Reply::Down { pid, status, .. }) => Down { pid, status },
            // Without a bridge nobody can tell; the job is ending.
            _ => Down { pid: self.pid, status: ExitStatus::Lost },
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        runtime::with_net(|net| net.calls.remove(&self.id));
    }
}

/// Cancels this process's monitors of `pid`: their futures never resolve.
pub fn demonitor(pid: Pid) {
    runtime::with_net(|net| net.request(&Request::Demonitor { pid }));
}

/// Links this process and `pid`.
///
/// When either ends with anything but success, the other is killed too (its
/// status reads `killed by link to <pid>`), unless it called
/// [`trap_exits(true)`](trap_exits): then it receives an [`Exit`] on [`exits`]
/// instead, for normal ends as well. Linking to a process already gone is an
/// immediate exit signal with [`ExitStatus::NoProc`].
pub fn link(pid: Pid) {
    runtime::with_net(|net| net.request(&Request::Link { pid }));
}

/// Removes the link between this process and `pid`.
pub fn unlink(pid: Pid) {
    runtime::with_net(|net| net.request(&Request::Unlink { pid }));
}

/// Like [`spawn`](crate::spawn), and links the new process to this one before
/// either can end, so no exit signal is missed.
pub fn spawn_link<F>(resources: Resources, f: F) -> Spawn
where
    F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + Serialize + DeserializeOwned + 'static,
{
    crate::ProcessFn::new(f).spawn(resources, crate::SpawnOptions { link: true, ..Default::default() })
}

/// Whether exit signals from linked processes arrive on [`exits`] (`true`) or
/// end this process when abnormal (`false`, the default).
pub fn trap_exits(on: bool) {
    runtime::with_net(|net| net.request(&Request::TrapExits { on }));
}

/// The exit signals this process receives while it traps exits.
#[derive(Debug)]
pub struct Exits(());

/// The stream of [`Exit`] signals from linked processes (see [`trap_exits`]).
pub fn exits() -> Exits {
    runtime::get();
    Exits(())
}

impl futures::Stream for Exits {
    type Item = Exit;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Exit>> {
        runtime::with_net(|net| {
            net.poll_control(cx.waker(), |net| match net.exits.pop_front() {
                Some(exit) => Some(Some(exit)),
                None if net.bridge_is_lost() => Some(None),
                None => {
                    net.exits_waker = Some(cx.waker().clone());
                    None
                }
            })
        })
    }
}

/// Kills `pid` now (SIGKILL). Its status reads "killed by signal 9".
pub fn kill(pid: Pid) {
    runtime::with_net(|net| net.request(&Request::Kill { pid }));
}

/// Asks `pid` to end (SIGTERM, which its [`on_shutdown`] hooks act on), and kills
/// it if it has not ended after `timeout`. Its status names this process.
pub fn shutdown(pid: Pid, timeout: Duration) {
    runtime::with_net(|net| net.request(&Request::Shutdown { pid, timeout: Some(timeout) }));
}

/// Like [`shutdown`], but never kills: waits as long as the process takes.
pub fn shutdown_and_wait(pid: Pid) {
    runtime::with_net(|net| net.request(&Request::Shutdown { pid, timeout: None }));
}

static SHUTDOWN_HOOKS: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());

/// Runs `f` when this process is asked to end by [`shutdown`] (SIGTERM); once every
/// hook has run, the process exits with code 0.
///
/// # Panics
/// If the signal handler cannot be installed.
pub fn on_shutdown(f: impl FnOnce() + Send + 'static) {
    runtime::get();
    let mut hooks = SHUTDOWN_HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    let first = hooks.is_empty();
    hooks.push(Box::new(f));
    drop(hooks);
    if first {
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM])
            .unwrap_or_else(|e| panic!("constellation: cannot handle SIGTERM for on_shutdown: {e}"));
        let started = std::thread::Builder::new().name("constellation-shutdown".into()).spawn(move || {
            if signals.forever().next().is_some() {
                let hooks = std::mem::take(&mut *SHUTDOWN_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
                for hook in hooks {
                    hook();
                }
                std::process::exit(0);
            }
        });
        if let Err(error) = started {
            panic!("constellation: cannot start the on_shutdown thread: {error}");
        }
    }
}

/// Sends the request `make` builds (with a fresh call id) to the bridge and waits
/// for its answer; `None` if the bridge is gone.
pub(crate) fn call_blocking(make: impl FnOnce(u64) -> Request) -> Option<Reply> {
    use crate::Block;
    struct Call(u64);
    impl Future for Call {
        type Output = Option<Reply>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
            poll_call(self.0, cx)
        }
    }
    let id = runtime::with_net(|net| net.call(make));
    Call(id).block()
}

/// Registers this process under `name`, unique within the job until the process
/// ends or calls [`unregister`].
///
/// # Errors
/// [`RegisterError::Taken`] if another live process holds the name.
pub fn register(name: &str) -> Result<(), RegisterError> {
    match call_blocking(|id| Request::Register { id, name: name.to_owned() }) {
        Some(Reply::Registered { result, .. }) => result,
        _ => Err(RegisterError::BridgeLost),
    }
}

/// Releases `name` if this process holds it.
pub fn unregister(name: &str) {
    runtime::with_net(|net| net.request(&Request::Unregister { name: name.to_owned() }));
}

/// The process registered under `name`, if any.
pub fn whereis(name: &str) -> Option<Pid> {
    match call_blocking(|id| Request::Whereis { id, name: name.to_owned() }) {
        Some(Reply::Found { pid, .. }) => pid,
        _ => None,
    }
}

/// What a supervisor did with one of its children, for the job's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorEvent {
    /// The child's name in its supervisor.
    pub child: String,
    /// The incarnation concerned, if one was running.
    pub pid: Option<Pid>,
    /// What happened.
    pub action: SupervisorAction,
    /// How the incarnation ended, for `Exited`, or why the supervisor gave up.
    pub reason: Option<String>,
    /// Restarts within the supervisor's intensity window, this one included.
    pub restarts: u32,
}

/// The kinds of [`SupervisorEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorAction {
    /// The child was started.
    Started,
    /// The child ended on its own (or by a link).
    Exited,
    /// The child is being started again.
    Restarting,
    /// The supervisor stopped the child.
    Stopped,
    /// Too many restarts: the supervisor stops everything and fails.
    GaveUp,
}

impl SupervisorAction {
    /// The word used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            SupervisorAction::Started => "started",
            SupervisorAction::Exited => "exited",
            SupervisorAction::Restarting => "restarting",
            SupervisorAction::Stopped => "stopped",
            SupervisorAction::GaveUp => "gave up",
        }
    }
}

/// Shows `event` on the job's output as one line (and as a JSON `supervisor` event).
pub fn report_supervisor_event(event: SupervisorEvent) {
    runtime::with_net(|net| net.request(&Request::Supervisor { event }));
}
