//! `init` and the per-process runtime it starts: who this process is, its
//! connections, its timers, the I/O thread, the panic hook and the exit flush.
//!
//! `init` is where the process roles split (DESIGN §3). Run by hand, the process
//! forks: the parent becomes the job's bridge, the child becomes the top process.
//! Every process (the top one, and each spawned one after its exec) forks once more:
//! the parent becomes its monitor, the child runs the user's code.

use crate::{
    bridge, codec, monitor,
    net::{Net, WAKER},
    proto::{Hello, Start, FDS_VAR, FORMAT_VAR},
    reactor::{self, TimerSlot, Timers},
    spawn, sys,
    transport::{self, Listeners},
    zygote, Pid, Resources,
};
use mio::Poll;
use parking_lot::{Condvar, Mutex};
use std::{
    fs::File,
    io::{Read, Write},
    net::TcpListener,
    os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

/// The state of an initialised process.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) me: Pid,
    pub(crate) resources: Resources,
    pub(crate) net: Mutex<Net>,
    /// Notified by the I/O thread each time it has handled events, for the exit
    /// flush to wait on (a handshake answered, room to write).
    pub(crate) progress: Condvar,
    pub(crate) timers: Mutex<Timers>,
    waker: mio::Waker,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_CALLED: AtomicBool = AtomicBool::new(false);
static PANIC_FD: OnceLock<OwnedFd> = OnceLock::new();
/// Whether this process's CPU share is also a hard quota (its node asks).
static HARD_CPU: AtomicBool = AtomicBool::new(false);

/// Set by a node daemon started with `--cpu-quota` for the processes it starts.
pub(crate) const CPU_QUOTA_VAR: &str = "CONSTELLATION_CPU_QUOTA";

/// The runtime; panics naming `init` if it has not been called.
pub(crate) fn get() -> &'static Runtime {
    RUNTIME.get().unwrap_or_else(|| {
        panic!("constellation: call constellation::init(Resources::default()) as the first line of main, before using any other constellation function")
    })
}

/// Runs `f` on the connection state, then wakes the reactor if frames were newly
/// queued and wakes the tasks `f` made ready.
pub(crate) fn with_net<R>(f: impl FnOnce(&mut Net) -> R) -> R {
    let runtime = get();
    let mut net = runtime.net.lock();
    let was_dirty = net.has_dirty();
    let result = f(&mut net);
    net.flush_requests();
    let now_dirty = net.has_dirty();
    let wake = std::mem::take(&mut net.to_wake);
    drop(net);
    if now_dirty && !was_dirty {
        let _ = runtime.waker.wake();
    }
    wake.into_iter().for_each(std::task::Waker::wake);
    result
}

/// Writes out every queued frame now (called before a thread parks).
pub(crate) fn flush_queued() {
    let Some(runtime) = RUNTIME.get() else { return };
    let mut net = runtime.net.lock();
    if !net.has_dirty() {
        return;
    }
    net.flush_dirty();
    let wake = std::mem::take(&mut net.to_wake);
    drop(net);
    wake.into_iter().for_each(std::task::Waker::wake);
}

/// How long a spawn waits at most for the monitor to read what the process
/// wrote before it.
const OUTPUT_CATCH_UP: Duration = Duration::from_millis(100);

/// Waits (bounded) until the monitor has read everything this process wrote to
/// its stdout and stderr, so that output written before a spawn is shown before
/// anything the new process writes.
pub(crate) fn wait_for_output_read() {
    let since = Instant::now();
    while [1, 2].iter().any(|&fd| sys::unread_in_pipe(fd) > 0) && since.elapsed() < OUTPUT_CATCH_UP {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Adds a timer, waking the reactor if it is now the earliest.
pub(crate) fn add_timer(deadline: Instant, slot: Arc<TimerSlot>) {
    let runtime = get();
    if runtime.timers.lock().add(deadline, slot) {
        let _ = runtime.waker.wake();
    }
}

/// Initialises this process. Call it first thing in `main`.
///
/// Run by hand, `init` starts the job: the process you started becomes the job's
/// bridge (it prints every process's output and ends with the top process's exit
/// code), and `init` returns in a new process, the top process of the job, with a
/// memory limit of `resources.mem`. In a process started by [`spawn`](crate::spawn),
/// `init` runs the spawned closure instead and never returns.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// fn main() {
///     init(Resources::default());
///     println!("I am {}", pid());
/// }
/// ```
///
/// # Panics
/// If it is called twice, if the process already has more than one thread (call
/// it before anything starts threads), or if the process cannot be set up (no
/// loopback port can be bound, no fork is possible); the message says which.
pub fn init(resources: Resources) {
    if INIT_CALLED.swap(true, Ordering::SeqCst) {
        panic!("constellation: init was called twice; call it once, as the first line of main");
    }
    let threads = sys::thread_count();
    if threads > 1 {
        panic!(
            "constellation: init must be called before any thread is started, as the first line of main \
             (this process already has {threads} threads)"
        );
    }
    if let Err(error) = sys::raise_fd_limit() {
        log::warn!("raising the open-files limit: {error}");
    }
    if std::env::var_os(PROBE_VAR).is_some() {
        answer_probe(resources);
    }
    match std::env::var(FDS_VAR) {
        Ok(fds) => start_spawned(&fds),
        Err(_) => start_job(resources),
    }
}

/// Set by a cluster's bridge when it runs a binary only to learn the top
/// process's resources: `init` prints them and exits.
pub(crate) const PROBE_VAR: &str = "CONSTELLATION_PROBE";
/// What the probe's answer on stdout starts with; a JSON `Resources` follows.
pub(crate) const PROBE_ANSWER: &str = "constellation-resources ";

fn answer_probe(resources: Resources) -> ! {
    let json = serde_json::to_string(&resources).unwrap_or_default();
    let _ = sys::write_all(1, format!("{PROBE_ANSWER}{json}\n").as_bytes());
    sys::exit_now(0)
}

/// This process's [`Pid`].
///
/// # Panics
/// If [`init`] has not been called.
pub fn pid() -> Pid {
    get().me
}

/// The [`Resources`] this process was started with.
///
/// # Panics
/// If [`init`] has not been called.
pub fn resources() -> Resources {
    get().resources
}

fn fail(what: &str, error: impl std::fmt::Display) -> ! {
    panic!("constellation: {what}: {error}")
}

/// Starts a job from a process run by hand: fork the bridge off, and continue as
/// the top process.
fn start_job(resources: Resources) {
    let json = match std::env::var(FORMAT_VAR) {
        Ok(format) if format == "json" => true,
        Ok(format) if format == "human" || format.is_empty() => false,
        Ok(format) => panic!("constellation: {FORMAT_VAR}={format:?} is not a format; use \"json\" or \"human\""),
        Err(_) => false,
    };
    remove_own_variables();
    let (listener, local) = transport::bind_loopback()
        .unwrap_or_else(|e| fail("cannot bind a port on 127.0.0.1 and its Unix socket for the top process", e));
    let addr = listener.local_addr().unwrap_or_else(|e| fail("reading the top process's port", e));
    let listeners = Listeners { tcp: listener, local: Some(local) };
    let top = Pid::new(addr, 1);
    let token = sys::random_u64();
    let (monitor_bridge, monitor_end) = UnixStream::pair().unwrap_or_else(|e| fail("making a socket pair", e));
    let (control_bridge, control_end) = UnixStream::pair().unwrap_or_else(|e| fail("making a socket pair", e));
    let (stdin_read, stdin_write) = sys::pipe().unwrap_or_else(|e| fail("making a pipe", e));
    let bridge_os_pid = sys::getpid();
    // SAFETY: init checked that this process has a single thread.
    match unsafe { sys::fork() }.unwrap_or_else(|e| fail("cannot fork the top process", e)) {
        sys::Fork::Parent(child) => {
            drop((monitor_end, control_end, stdin_read, listeners));
            bridge::run(bridge::Setup {
                top,
                top_monitor: child,
                resources,
                token,
                json,
                monitor: monitor_bridge,
                control: control_bridge,
                stdin: stdin_write,
            })
        }
        sys::Fork::Child => {
            drop((monitor_bridge, control_bridge, stdin_write));
            if sys::new_process_group().is_err() || sys::die_with_parent(libc::SIGKILL, bridge_os_pid).unwrap_or(true) {
                sys::exit_now(1);
            }
            let cgroup = format!("constellation-{}-{}", bridge_os_pid.0, top.incarnation());
            let start = Start {
                incarnation: top.incarnation(),
                parent: None,
                resources,
                token,
                bridge_os_pid: bridge_os_pid.0,
                bridge_addr: None,
                heartbeats: None,
                cgroup,
                closure: None,
            };
            become_process(start, monitor_end, control_end, listeners, Some(stdin_read), None);
        }
    }
}

/// Removes this project's variables, so spawned processes do not inherit them.
fn remove_own_variables() {
    let ours: Vec<_> =
        std::env::vars_os().map(|(k, _)| k).filter(|k| k.to_string_lossy().starts_with("CONSTELLATION_")).collect();
    for key in ours {
        if key != "CONSTELLATION_LOG" {
            std::env::remove_var(key);
        }
    }
}

/// The exit code of a Rust program whose `main` panicked.
const PANIC_EXIT_CODE: i32 = 101;

/// Starts a process the bridge (or, on a cluster, a node daemon) exec'd, or, in
/// the zygote, each process it forks: read who it is from the inherited fds. The top process of a deployed job has no closure:
/// `init` returns to its `main`.
fn start_spawned(fds: &str) {
    std::env::remove_var(FDS_VAR);
    if std::env::var_os(CPU_QUOTA_VAR).is_some() {
        HARD_CPU.store(true, Ordering::Relaxed);
        std::env::remove_var(CPU_QUOTA_VAR);
    }
    // A process forked from the zygote has the zygote as its parent.
    let (fds, forked_by): (Vec<RawFd>, Option<sys::OsPid>) = match zygote::zygote_socket(fds) {
        Some(socket) => {
            let (fds, zygote) = zygote::serve(socket);
            (fds.to_vec(), Some(zygote))
        }
        None => (fds.split(',').filter_map(|fd| fd.parse().ok()).collect(), None),
    };
    let (channels, listener_fd, local_fd, start_fd, lease_fd) = match fds[..] {
        [monitor, control, listener, local, start] if monitor >= 0 && control >= 0 => {
            (Some((monitor, control)), listener, Some(local), start, None)
        }
        [-1, -1, listener, start, lease] => (None, listener, None, start, Some(lease)),
        _ => {
            panic!("constellation: {FDS_VAR} is set but malformed; it is set by the bridge for spawned processes only")
        }
    };
    // SAFETY: whoever exec'd this process passed these fds to it alone.
    let (listeners, start_file, lease) = unsafe {
        (
            Listeners {
                tcp: TcpListener::from_raw_fd(listener_fd),
                local: local_fd.map(|fd| std::os::unix::net::UnixListener::from_raw_fd(fd)),
            },
            File::from_raw_fd(start_fd),
            lease_fd.map(|fd| OwnedFd::from_raw_fd(fd)),
        )
    };
    for fd in [Some(listener_fd), local_fd, lease_fd].into_iter().flatten() {
        if let Err(error) = sys::set_cloexec(fd) {
            fail("setting close-on-exec on an inherited fd", error);
        }
    }
    let mut bytes = Vec::new();
    let start: Start = (&start_file)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())
        .and_then(|_| codec::decode(&bytes).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| fail("reading the spawn arguments from the bridge", e));
    drop(start_file);
    let spawner = match forked_by {
        Some(zygote) => zygote,
        None if start.bridge_os_pid != 0 => sys::OsPid(start.bridge_os_pid),
        None => sys::getppid(),
    };
    if sys::die_with_parent(libc::SIGKILL, spawner).unwrap_or(true) {
        sys::exit_now(1);
    }
    let (monitor_end, control_end) = match channels {
        Some((monitor, control)) => {
            for fd in [monitor, control] {
                if let Err(error) = sys::set_cloexec(fd) {
                    fail("setting close-on-exec on an inherited fd", error);
                }
            }
            // SAFETY: the bridge passed these fds to this process alone.
            unsafe { (UnixStream::from_raw_fd(monitor), UnixStream::from_raw_fd(control)) }
        }
        None => connect_to_bridge(&start, &listeners.tcp),
    };
    let parent = start.parent;
    let closure = start.closure.clone();
    become_process(start, monitor_end, control_end, listeners, None, lease);
    let Some((entry, arg)) = closure else {
        // The top process of a deployed job: run main.
        return;
    };
    let Some(parent) = parent else { panic!("constellation: a spawned process was started without a parent") };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the bridge exec'd this very binary (/proc/self/exe, or on a
        // cluster the same bytes by their hash), and `entry` is the offset of a
        // trampoline from `spawn::base` computed in that same binary.
        unsafe { spawn::run_trampoline(entry, &arg, parent) }
    }));
    // The closure ran instead of the rest of `main`: nothing of `init`'s callers
    // is left to unwind or clean up. A panic ends the process with the code a
    // panic out of `main` has; its message has gone to the monitor already.
    let _ = std::io::stdout().flush();
    sys::exit(if ran.is_ok() { 0 } else { PANIC_EXIT_CODE })
}

/// Opens the monitor's and the process's connections to a remote bridge. They are
/// TCP streams, used through the same stream-socket type as on one machine.
fn connect_to_bridge(start: &Start, listener: &TcpListener) -> (UnixStream, UnixStream) {
    let Some(bridge) = start.bridge_addr else { fail("starting on a cluster", "the bridge's address is missing") };
    let addr = listener.local_addr().unwrap_or_else(|e| fail("reading this process's port", e));
    let connect = |monitor: bool| {
        let stream = std::net::TcpStream::connect(bridge)
            .unwrap_or_else(|e| fail(&format!("cannot connect to the job's bridge at {bridge}"), e));
        let _ = stream.set_nodelay(true);
        let hello = Hello { token: start.token, incarnation: start.incarnation, addr, monitor };
        let mut frame = Vec::new();
        codec::append_frame(&mut frame, crate::proto::KIND_MESSAGE, &hello)
            .unwrap_or_else(|e| fail("encoding the greeting to the bridge", e));
        (&stream).write_all(&frame).unwrap_or_else(|e| fail("greeting the job's bridge", e));
        // SAFETY: the fd is moved out of the TcpStream, so it has one owner.
        unsafe { UnixStream::from_raw_fd(stream.into_raw_fd()) }
    };
    (connect(true), connect(false))
}

/// Forks the monitor off; returns in the child, which then runs the user's code.
fn become_process(
    start: Start,
    monitor_end: UnixStream,
    control: UnixStream,
    listeners: Listeners,
    stdin: Option<OwnedFd>,
    lease: Option<OwnedFd>,
) {
    let (out_read, out_write) = sys::pipe().unwrap_or_else(|e| fail("making a pipe", e));
    let (err_read, err_write) = sys::pipe().unwrap_or_else(|e| fail("making a pipe", e));
    let (panic_read, panic_write) = sys::pipe().unwrap_or_else(|e| fail("making a pipe", e));
    // A deployed job's top process reads the stdin `cargo deploy` forwards, which
    // its monitor receives from the bridge.
    let (stdin, stdin_feed) = if start.bridge_addr.is_some() && start.parent.is_none() {
        let (read, write) = sys::pipe().unwrap_or_else(|e| fail("making a pipe", e));
        if let Err(error) = sys::set_nonblocking(write.as_raw_fd()) {
            fail("making a pipe", error);
        }
        (Some(read), Some(write))
    } else {
        (stdin, None)
    };
    let monitor_os_pid = sys::getpid();
    // SAFETY: init checked that this process has a single thread.
    match unsafe { sys::fork() }.unwrap_or_else(|e| fail("cannot fork the process from its monitor", e)) {
        sys::Fork::Parent(child) => {
            drop((out_write, err_write, panic_write, control, listeners, stdin));
            sys::ignore_signal(libc::SIGINT);
            monitor::run(monitor::Setup {
                child,
                bridge: monitor_end,
                lease,
                stdin: stdin_feed,
                stdout: out_read,
                stderr: err_read,
                panic: panic_read,
                resources: start.resources,
                cgroup: start.cgroup.clone(),
                recycle_cgroup: start.bridge_addr.is_none(),
                heartbeats: start.heartbeats,
            })
        }
        sys::Fork::Child => {
            drop((monitor_end, out_read, err_read, panic_read, lease, stdin_feed));
            let redirect = |from: &OwnedFd, to: RawFd| {
                if let Err(error) = sys::dup2(from.as_raw_fd(), to) {
                    fail("redirecting the process's standard streams", error);
                }
            };
            if let Some(stdin) = &stdin {
                redirect(stdin, 0);
            }
            redirect(&out_write, 1);
            redirect(&err_write, 2);
            drop((stdin, out_write, err_write));
            if sys::die_with_parent(libc::SIGKILL, monitor_os_pid).unwrap_or(true) {
                sys::exit_now(1);
            }
            let hard_cpu = HARD_CPU.load(Ordering::Relaxed);
            if let Err(error) = sys::enter_limits(&start.cgroup, &start.resources, hard_cpu) {
                log::warn!("limiting this process's memory: {error}");
            }
            start_runtime(start, control, listeners, panic_write);
        }
    }
}

/// Sets up the runtime of the user's process and its I/O thread.
fn start_runtime(start: Start, control: UnixStream, listeners: Listeners, panic_write: OwnedFd) {
    // Registering for `membarrier` (which the channels' locks use, see
    // `biased`) costs ~1 µs while the process has one thread, and an RCU grace
    // period (~10 ms) once it has more: now, before the I/O thread starts.
    sys::membarrier_ready();
    let Listeners { tcp: listener, local } = listeners;
    let me = listener
        .local_addr()
        .map(|addr| Pid::new(addr, start.incarnation))
        .unwrap_or_else(|e| fail("reading this process's port", e));
    // A process started without its Unix socket (a deployed one) binds its
    // own; without one, peers on this host connect to it over TCP.
    let local = local
        .map_or_else(|| transport::listen_locally(me.addr()), Ok)
        .and_then(|local| local.set_nonblocking(true).map(|()| local))
        .inspect_err(|error| log::debug!("listening on a Unix socket: {error}"))
        .ok();
    let setup = || -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        control.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let net = Net::new(
            me,
            start.token,
            poll.registry().try_clone()?,
            mio::net::TcpListener::from_std(listener),
            local.map(mio::net::UnixListener::from_std),
            mio::net::UnixStream::from_std(control),
        )?;
        let runtime = Runtime {
            me,
            resources: start.resources,
            net: Mutex::new(net),
            progress: Condvar::new(),
            timers: Mutex::new(Timers::default()),
            waker,
        };
        if RUNTIME.set(runtime).is_err() {
            panic!("constellation: the runtime was set up twice");
        }
        std::thread::Builder::new().name("constellation-io".into()).spawn(move || reactor::run(get(), poll))?;
        Ok(())
    };
    setup().unwrap_or_else(|e| fail("setting up the process's connections", e));
    let _ = PANIC_FD.set(panic_write);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(fd) = PANIC_FD.get() {
            let message = info.payload_as_str().unwrap_or("a panic payload that is not a string");
            let _ = sys::write_all(fd.as_raw_fd(), format!("{message}\0").as_bytes());
        }
        previous(info);
    }));
    sys::at_exit(flush_at_exit);
}

/// How long the exit flush waits without progress before giving up.
const EXIT_FLUSH_IDLE: Duration = Duration::from_secs(5);

/// Runs at `exit`: waits until everything sent has reached its peers' kernels
/// (bounded), so values sent just before the process ends are not lost.
extern "C" fn flush_at_exit() {
    let Some(runtime) = RUNTIME.get() else { return };
    let mut least = usize::MAX;
    let mut progress_at = Instant::now();
    let mut net = runtime.net.lock();
    loop {
        net.flush_dirty();
        let unsent = net.unsent();
        if unsent == 0 {
            net.discard_input();
            return;
        }
        if unsent < least {
            least = unsent;
            progress_at = Instant::now();
        } else if progress_at.elapsed() > EXIT_FLUSH_IDLE {
            log::warn!("exiting with {unsent} bytes not delivered: the receiving processes are not reading");
            return;
        }
        // Until the I/O thread has handled what came (the answer to a
        // handshake, room to write), or a moment has passed.
        runtime.progress.wait_for(&mut net, Duration::from_millis(1));
    }
}
