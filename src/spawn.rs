//! `spawn` and `try_spawn`: start a closure in a new process of the job.
//!
//! The closure is serialised with bincode. The code that runs it is a
//! monomorphised trampoline `fn(&[u8], Pid)` whose address travels as an offset
//! from [`base`], so the same binary, exec'd again, finds it.

use crate::{
    codec,
    proto::{Environment, Reply, Request, SpawnRequest},
    runtime, Pid, Resources,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// Why a process could not be spawned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnError {
    /// Nothing can hold a process of these `Resources` now (from `try_spawn`).
    NoCapacity,
    /// The job's bridge is gone, so no process can be started.
    BridgeLost,
    /// The operating system refused to start the process; the reason says why.
    Failed(String),
    /// The node the process was placed on was lost while the process started;
    /// spawning again places it on another node.
    Lost,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoCapacity => f.write_str("no capacity: nothing can hold a process of these resources now"),
            SpawnError::BridgeLost => f.write_str("the job's bridge is gone, so no process can be started"),
            SpawnError::Failed(reason) => write!(f, "the process could not be started: {reason}"),
            SpawnError::Lost => f.write_str("its node was lost while the process started"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// The fixed function trampoline addresses are measured from.
#[inline(never)]
pub(crate) fn base() {
    std::hint::black_box(());
}

fn trampoline<F>(arg: &[u8], parent: Pid)
where
    F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + DeserializeOwned,
{
    let closure: F = codec::decode(arg)
        .unwrap_or_else(|e| panic!("constellation: cannot decode the closure this process was spawned with: {e}"));
    closure.call_once((parent,));
}

/// Runs the trampoline at offset `entry` from [`base`] on `arg`.
///
/// # Safety
/// `entry` must have been computed by [`spawn`] in this same binary.
pub(crate) unsafe fn run_trampoline(entry: isize, arg: &[u8], parent: Pid) {
    let address = (base as fn() as usize as isize).wrapping_add(entry) as usize;
    // SAFETY: the caller guarantees `address` is a `fn(&[u8], Pid)` of this binary.
    let trampoline: fn(&[u8], Pid) = unsafe { std::mem::transmute::<usize, fn(&[u8], Pid)>(address) };
    trampoline(arg, parent)
}

/// A task function of this binary, as an offset from [`base`] another process of
/// the same binary can call with [`call_task`].
pub(crate) fn task_entry(task: fn(&[u8]) -> Vec<u8>) -> isize {
    (task as usize as isize).wrapping_sub(base as fn() as usize as isize)
}

/// Calls the task function at offset `entry` from [`base`] on `arg`.
///
/// # Safety
/// `entry` must have been computed by [`task_entry`] in this same binary.
pub(crate) unsafe fn call_task(entry: isize, arg: &[u8]) -> Vec<u8> {
    let address = (base as fn() as usize as isize).wrapping_add(entry) as usize;
    // SAFETY: the caller guarantees `address` is a `fn(&[u8]) -> Vec<u8>` of this binary.
    let task: fn(&[u8]) -> Vec<u8> = unsafe { std::mem::transmute::<usize, fn(&[u8]) -> Vec<u8>>(address) };
    task(arg)
}

/// Starts `f` in a new process with `resources`, and resolves to its [`Pid`].
///
/// The new process runs this same binary with the parent's arguments, environment
/// and working directory; its `init` calls `f(parent_pid)` instead of returning,
/// and the process exits 0 when `f` returns.
///
/// On one machine nothing is refused: memory beyond the machine's is reserved with
/// a one-time warning on the job's output (use [`try_spawn`] to be refused
/// instead). Its memory is limited to `resources.mem`.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// fn main() {
///     init(Resources::default());
///     let child = spawn(Resources::default(), FnOnce!(move |parent: Pid| {
///         Sender::<String>::new(parent).send(format!("hello from {}", pid())).block();
///     }))
///     .block()
///     .expect("spawn failed");
///     println!("{}", Receiver::<String>::new(child).recv().block().unwrap());
/// }
/// ```
///
/// # Errors
/// [`SpawnError::Failed`] if the operating system could not start the process,
/// [`SpawnError::BridgeLost`] if the job is ending.
///
/// # Panics
/// If [`init`](crate::init) has not been called.
pub fn spawn<F>(resources: Resources, f: F) -> Spawn
where
    F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + Serialize + DeserializeOwned + 'static,
{
    ProcessFn::new(f).spawn(resources, SpawnOptions::default())
}

/// Like [`spawn`], but fails at once with [`SpawnError::NoCapacity`] when nothing
/// can hold a process of `resources` now, instead of going ahead.
pub fn try_spawn<F>(resources: Resources, f: F) -> Spawn
where
    F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + Serialize + DeserializeOwned + 'static,
{
    ProcessFn::new(f).spawn(resources, SpawnOptions { try_only: true, ..SpawnOptions::default() })
}

/// How a process is started, beyond its closure and resources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnOptions {
    /// Fail with [`SpawnError::NoCapacity`] instead of going ahead beyond capacity.
    pub try_only: bool,
    /// Link the new process to the caller before either can end
    /// (see [`spawn_link`](crate::spawn_link)).
    pub link: bool,
    /// Bind the new process to the caller: it is killed whenever the caller ends,
    /// however it ends and whether or not it traps exits, and the caller's end is
    /// announced (to monitors and links) only once every process bound to it has
    /// ended. Supervisors bind their children so a subtree never outlives its
    /// supervisor and two incarnations never run at once.
    pub bind: bool,
    /// Register the new process under this name as it starts.
    pub register: Option<String>,
    /// How a cluster's master chooses the node (one machine has one node).
    pub placement: Placement,
}

/// How a cluster's master chooses a node for a new process, among the nodes with
/// room for its `Resources`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Placement {
    /// The node least loaded now (by its CPU share and memory in use).
    #[default]
    LeastLoaded,
    /// The nodes in turn, per job: each placement goes to the next node with room.
    RoundRobin,
}

/// A closure to run in new processes, stored as its trampoline and serialised
/// bytes: it can be spawned any number of times, sent to other processes, and
/// closures of different types can be kept side by side (as a supervisor does).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessFn {
    entry: isize,
    arg: Vec<u8>,
}

impl ProcessFn {
    /// Stores `f`.
    ///
    /// # Panics
    /// If `f` cannot be serialised.
    pub fn new<F>(f: F) -> ProcessFn
    where
        F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + Serialize + DeserializeOwned + 'static,
    {
        let entry = (trampoline::<F> as fn(&[u8], Pid) as usize as isize).wrapping_sub(base as fn() as usize as isize);
        let arg =
            codec::encode(&f).unwrap_or_else(|e| panic!("constellation: cannot serialise the closure to spawn: {e}"));
        ProcessFn { entry, arg }
    }

    /// Starts the closure in a new process, as [`spawn`] does, with `options`.
    ///
    /// # Panics
    /// If [`init`](crate::init) has not been called.
    pub fn spawn(&self, resources: Resources, options: SpawnOptions) -> Spawn {
        runtime::get();
        runtime::wait_for_output_read();
        let request = SpawnRequest {
            id: 0,
            resources,
            options,
            monitor: None,
            entry: self.entry,
            arg: self.arg.clone(),
            env: Environment::current(),
        };
        Spawn { request: Some(request), id: 0, monitor: None, kill_if_dropped: false }
    }

    /// Like [`ProcessFn::spawn`], and monitors the new process from before it can
    /// end: once the spawn resolves, [`Spawn::monitor`] gives the monitor.
    pub(crate) fn spawn_monitored(&self, resources: Resources, options: SpawnOptions) -> Spawn {
        let mut spawn = self.spawn(resources, options);
        let id = runtime::with_net(|net| net.new_slot());
        if let Some(request) = &mut spawn.request {
            request.monitor = Some(id);
        }
        spawn.monitor = Some(id);
        spawn
    }
}

/// The future of a [`spawn`]: resolves to the new process's [`Pid`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled: call .block() or .await"]
pub struct Spawn {
    request: Option<SpawnRequest>,
    id: u64,
    /// The monitor set up with the spawn, if asked for.
    monitor: Option<u64>,
    /// Kill the process if this future is dropped before it resolves (jobs).
    pub(crate) kill_if_dropped: bool,
}

impl Spawn {
    /// The monitor of the spawned process `pid`, if this spawn set one up.
    pub(crate) fn monitor(&mut self, pid: Pid) -> Option<crate::Monitor> {
        self.monitor.take().map(|id| crate::Monitor::from_slot(pid, id))
    }
}

impl Future for Spawn {
    type Output = Result<Pid, SpawnError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        runtime::with_net(|net| {
            if let Some(request) = this.request.take() {
                this.id = net.call(|id| Request::Spawn(SpawnRequest { id, ..request }));
            }
            net.poll_call(this.id, cx).map(|reply| match reply {
                Some(Reply::Spawned { result, .. }) => result,
                _ => Err(SpawnError::BridgeLost),
            })
        })
    }
}

impl Drop for Spawn {
    fn drop(&mut self) {
        if self.id != 0 || self.monitor.is_some() {
            runtime::with_net(|net| {
                let answer = net.calls.remove(&self.id).and_then(|slot| slot.reply);
                if let Some(monitor) = self.monitor {
                    net.calls.remove(&monitor);
                }
                // A job's process is not to outlive its dropped future.
                if self.kill_if_dropped && self.id != 0 {
                    match answer {
                        Some(Reply::Spawned { result: Ok(pid), .. }) => net.request(&Request::Kill { pid }),
                        Some(_) => {}
                        None => drop(net.unwanted_spawns.insert(self.id)),
                    }
                }
            });
        }
    }
}
