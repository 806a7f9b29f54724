//! The bridge: one per job. It starts the job's processes (the embedded
//! one-machine scheduler), prints their output, allocates their `Pid`s, tells
//! processes when the peers they watch end, and exits with the top process's exit
//! code once every process of the job has ended.
//!
//! It is a single-threaded event loop over one connection per monitor (output and
//! exit reports) and one per process (requests), plus a thread that forwards the
//! bridge's stdin to the top process. SIGINT, SIGTERM and SIGHUP stop the job:
//! every monitor is killed, and each process dies with its monitor.
//!
//! On a cluster (`run_deployed`) the same loop runs with the master's scheduler in
//! place of the local one: see `remote`.

mod output;
mod remote;

use crate::{
    cluster::Deployment,
    codec,
    proto::{Command, Environment, Hello, MailTo, Reply, Report, Request, SpawnRequest, Start, KIND_MESSAGE},
    sys::{self, OsPid},
    transport,
    zygote::{self, Zygote},
    ExitStatus, Pid, Resources, SpawnError, SpawnOptions,
};
use mio::{net::UnixStream, Events, Interest, Poll, Token};
use output::Printer;
use slab::Slab;
use std::{
    collections::HashMap,
    io::{self, Read, Write},
    os::fd::{AsRawFd, OwnedFd},
};

const SIGNAL_CHILD: Token = Token(usize::MAX - 1);
/// How many empty cgroups of ended processes the bridge keeps for new ones.
const REUSED_CGROUPS: usize = 256;
/// The signals that stop the job; each has a pipe and the token `usize::MAX - 2 - index`.
const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// What the top-level `init` hands the bridge.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) top: Pid,
    pub(crate) top_monitor: OsPid,
    pub(crate) resources: Resources,
    pub(crate) token: u64,
    pub(crate) json: bool,
    pub(crate) monitor: std::os::unix::net::UnixStream,
    pub(crate) control: std::os::unix::net::UnixStream,
    pub(crate) stdin: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Monitor,
    Control,
    /// A connection from a remote process that has not yet said who it is.
    Greeting,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    pid: Pid,
    role: Role,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Whether the event loop hears of room to write: only while `wbuf` waits
    /// for it, as a Unix socket reports room each time its reader reads.
    wants_output: bool,
}

#[derive(Debug)]
struct Proc {
    /// The monitor's OS pid, when this bridge started it.
    monitor_os_pid: Option<OsPid>,
    /// On a cluster: how the monitor ended, as its node saw it, held until its
    /// connection has been read to the end (its own report comes first).
    monitor_ended: Option<ExitStatus>,
    /// On a cluster: whether its monitor's connection has said who it is.
    monitor_greeted: bool,
    /// When its monitor was last heard from (on a cluster, where silence for
    /// too long means the process is lost).
    monitor_heard: std::time::Instant,
    /// On a cluster: frames for the monitor and for the process sent before it
    /// connected, written once it has.
    early_monitor: Vec<u8>,
    early_control: Vec<u8>,
    resources: Resources,
    /// The cgroup a local spawn named for it, which may be reused once it ends
    /// (the top process's is left to the sweep at the job's end).
    cgroup: Option<String>,
    status: Option<ExitStatus>,
    monitor: Option<usize>,
    control: Option<usize>,
    /// Processes to tell (`Reply::Ended`) when this one ends, for their channels.
    watchers: Vec<Pid>,
    /// Processes linked to this one.
    links: Vec<Pid>,
    /// Whether exit signals reach this process as messages.
    traps_exits: bool,
    /// (watcher, monitor id) of the monitors of this process.
    monitors: Vec<(Pid, u64)>,
    /// Processes bound to this one (see `SpawnOptions::bind`).
    bound: Vec<Pid>,
    /// The process this one is bound to.
    bound_to: Option<Pid>,
    /// Whether its end has been announced to watchers, monitors and links.
    announced: bool,
}

struct Bridge {
    poll: Poll,
    conns: Slab<Conn>,
    /// The connections being read, innermost last: a process's end reads its
    /// connections first (see [`Bridge::read_before_end`]), never one already
    /// being read further up.
    reading: Vec<usize>,
    procs: HashMap<Pid, Proc>,
    by_os_pid: HashMap<i32, Pid>,
    live: usize,
    next_incarnation: u64,
    token: u64,
    top: Pid,
    job_group: OsPid,
    printer: Printer,
    reserved: u64,
    physical: u64,
    warned: bool,
    stop_signals: Vec<UnixStream>,
    child_signals: UnixStream,
    stop: Option<i32>,
    /// The name registry: each name and the live process holding it.
    names: HashMap<String, Pid>,
    /// Empty cgroups for the next spawns (see `sys::cgroup`): made ahead of
    /// need, or left by ended processes (at most `REUSED_CGROUPS` of those).
    prepared: Vec<String>,
    /// How many cgroups were prepared; `None` once that failed (no cgroups here).
    cgroups_made: Option<u64>,
    /// On a cluster: the master's scheduler and the port processes connect to.
    remote: Option<remote::Remote>,
    /// The process local spawns fork from (see `zygote`); `Err` once starting
    /// one failed, and spawns are exec'd.
    zygote: Result<Option<Zygote>, ()>,
}

/// Runs the bridge until the job has ended; exits the process with the job's code.
pub(crate) fn run(setup: Setup) -> ! {
    let code = match Bridge::new(setup) {
        Ok(mut bridge) => bridge.run(),
        Err(error) => {
            let _ = sys::write_all(2, format!("constellation: the bridge could not start: {error}\n").as_bytes());
            1
        }
    };
    sys::exit_now(code)
}

/// A pipe the handler of `signal` writes a byte to.
fn signal_pipe(signal: i32) -> io::Result<UnixStream> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(signal, write)?;
    Ok(UnixStream::from_std(read))
}

/// Runs a deployed job's bridge until the job has ended; returns its exit code.
pub(crate) fn run_deployed(deployment: Deployment) -> i32 {
    match Bridge::new_deployed(deployment) {
        Ok(mut bridge) => bridge.run(),
        Err(error) => {
            let _ = sys::write_all(2, format!("constellation: the bridge could not start: {error}\n").as_bytes());
            1
        }
    }
}

impl Bridge {
    fn new(setup: Setup) -> io::Result<Bridge> {
        let mut bridge = Bridge::empty(setup.token, setup.top, setup.top_monitor, setup.json)?;
        bridge.printer.top(setup.top);
        bridge.add_process(setup.top, Some(setup.top_monitor), setup.resources)?;
        bridge.attach(setup.top, setup.monitor, Role::Monitor)?;
        bridge.attach(setup.top, setup.control, Role::Control)?;
        forward_stdin(setup.stdin);
        Ok(bridge)
    }

    fn empty(token: u64, top: Pid, job_group: OsPid, json: bool) -> io::Result<Bridge> {
        let poll = Poll::new()?;
        let mut stop_signals = Vec::new();
        for (index, signal) in STOP_SIGNALS.into_iter().enumerate() {
            let mut pipe = signal_pipe(signal)?;
            poll.registry().register(&mut pipe, Token(usize::MAX - 2 - index), Interest::READABLE)?;
            stop_signals.push(pipe);
        }
        let mut child_signals = signal_pipe(libc::SIGCHLD)?;
        poll.registry().register(&mut child_signals, SIGNAL_CHILD, Interest::READABLE)?;
        Ok(Bridge {
            poll,
            conns: Slab::new(),
            reading: Vec::new(),
            procs: HashMap::new(),
            by_os_pid: HashMap::new(),
            live: 0,
            next_incarnation: 2,
            token,
            top,
            job_group,
            printer: Printer::new(json),
            reserved: 0,
            physical: sys::physical_memory(),
            warned: false,
            stop_signals,
            child_signals,
            stop: None,
            names: HashMap::new(),
            prepared: Vec::new(),
            cgroups_made: Some(0),
            remote: None,
            zygote: Ok(None),
        })
    }

    fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        sys::sweep_stale_cgroups();
        // A SIGCHLD may have come before the handler was installed.
        self.reap();
        while self.live > 0 || self.remote.as_ref().is_some_and(remote::Remote::placing) {
            let tick = self.remote.as_ref().map(remote::Remote::tick);
            if let Err(error) = self.poll.poll(&mut events, tick) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.printer.warning(&format!("the bridge's event loop failed: {error}"));
                self.printer.flush();
                self.stop_job();
                return 1;
            }
            for event in events.iter() {
                match event.token() {
                    Token(key) if key >= usize::MAX - 2 - (STOP_SIGNALS.len() - 1) && key <= usize::MAX - 2 => {
                        let index = usize::MAX - 2 - key;
                        drain_signals(&mut self.stop_signals[index]);
                        self.stop = Some(STOP_SIGNALS[index]);
                    }
                    SIGNAL_CHILD => {
                        drain_signals(&mut self.child_signals);
                        self.reap();
                    }
                    remote::SCHEDULER => self.on_scheduler_event(event),
                    remote::LISTENER => self.accept_processes(),
                    remote::STDIN => self.read_stdin(),
                    Token(key) => {
                        if event.is_writable() {
                            self.flush(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key);
                        }
                    }
                }
            }
            // What the events printed goes out as one write per fd switch.
            self.printer.flush();
            if let Some(signal) = self.stop {
                self.stop_job();
                return 128 + signal;
            }
            if self.remote.is_none() {
                self.prepare_cgroups();
            } else {
                self.feed_stdin();
                self.exchange_heartbeats();
                self.end_unreported();
            }
        }
        self.printer.flush();
        self.remove_cgroups();
        self.procs.get(&self.top).and_then(|p| p.status.as_ref()).map_or(1, ExitStatus::code)
    }

    fn cgroup_name(&self, suffix: impl std::fmt::Display) -> String {
        format!("constellation-{}-{suffix}", sys::getpid().0)
    }

    /// Makes a few cgroups ahead of the next spawns, off their critical path.
    fn prepare_cgroups(&mut self) {
        const AHEAD: usize = 2;
        while self.prepared.len() < AHEAD {
            let Some(made) = self.cgroups_made else { return };
            // Apart from the names processes make for themselves (their incarnations).
            let name = self.cgroup_name(format_args!("p{made}"));
            if !sys::prepare_cgroup(&name) {
                self.cgroups_made = None;
                return;
            }
            self.cgroups_made = Some(made + 1);
            self.prepared.push(name);
        }
    }

    /// Kills every process of the job (each monitor, and the job's process
    /// group), then removes the job's cgroups once the processes have left them.
    fn stop_job(&mut self) {
        for process in self.procs.values().filter(|p| p.status.is_none()) {
            if let Some(monitor) = process.monitor_os_pid {
                let _ = sys::kill(monitor, libc::SIGKILL);
            }
        }
        if self.remote.is_some() {
            // The master kills the job's processes once this bridge is gone; tell
            // the monitors that can still be reached at once.
            let alive: Vec<Pid> = self.procs.iter().filter(|(_, p)| p.status.is_none()).map(|(&pid, _)| pid).collect();
            for pid in alive {
                self.command(pid, &Command::Kill { status: ExitStatus::Signal(libc::SIGKILL) });
            }
            return;
        }
        let _ = sys::kill_group(self.job_group, libc::SIGKILL);
        self.remove_cgroups();
    }

    /// Removes the job's cgroups, waiting (bounded) for its processes to leave
    /// them. Monitors remove their process's own after reporting its end, but a
    /// monitor whose bridge has exited dies before it can.
    fn remove_cgroups(&mut self) {
        for name in self.prepared.drain(..) {
            sys::remove_cgroups(&name);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while sys::remove_job_cgroups(sys::getpid().0) > 0 && std::time::Instant::now() < deadline {
            while sys::reap_any().is_some() {}
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Counts a new process of the job; its connections are attached separately.
    fn add_process(&mut self, pid: Pid, monitor_os_pid: Option<OsPid>, resources: Resources) -> io::Result<()> {
        self.procs.insert(
            pid,
            Proc {
                monitor_os_pid,
                monitor_ended: None,
                monitor_greeted: false,
                monitor_heard: std::time::Instant::now(),
                early_monitor: Vec::new(),
                early_control: Vec::new(),
                resources,
                cgroup: None,
                status: None,
                monitor: None,
                control: None,
                watchers: Vec::new(),
                links: Vec::new(),
                traps_exits: false,
                monitors: Vec::new(),
                bound: Vec::new(),
                bound_to: None,
                announced: false,
            },
        );
        if let Some(os_pid) = monitor_os_pid {
            self.by_os_pid.insert(os_pid.0, pid);
        }
        self.live += 1;
        self.reserved += resources.mem.bytes();
        Ok(())
    }

    /// Watches `stream` as the monitor's or the control connection of `pid`.
    fn attach(&mut self, pid: Pid, stream: std::os::unix::net::UnixStream, role: Role) -> io::Result<()> {
        let key = self.add_conn(stream, pid, role)?;
        if let Some(process) = self.procs.get_mut(&pid) {
            match role {
                Role::Monitor => process.monitor = Some(key),
                Role::Control => process.control = Some(key),
                Role::Greeting => {}
            }
        }
        Ok(())
    }

    fn add_conn(&mut self, stream: std::os::unix::net::UnixStream, pid: Pid, role: Role) -> io::Result<usize> {
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(&mut stream, Token(key), Interest::READABLE)?;
        entry.insert(Conn { stream, pid, role, rbuf: Vec::new(), wbuf: Vec::new(), wants_output: false });
        Ok(key)
    }

    fn close_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let Some(process) = self.procs.get_mut(&conn.pid) else { return };
        match conn.role {
            Role::Monitor if process.monitor == Some(key) => {
                process.monitor = None;
                // On a cluster, the node may have said how the monitor ended
                // before its last report was read.
                if let Some(status) = process.monitor_ended.take() {
                    self.on_exit(conn.pid, status);
                } else if process.monitor_os_pid.is_none() && self.remote.is_none() {
                    // A monitor forked by the zygote, which reaps it: gone
                    // without a report, it was killed, and its process with it.
                    self.on_exit(conn.pid, ExitStatus::Signal(libc::SIGKILL));
                }
            }
            Role::Control if process.control == Some(key) => process.control = None,
            _ => {}
        }
    }

    fn read(&mut self, key: usize) {
        if self.reading.contains(&key) {
            return;
        }
        self.reading.push(key);
        self.read_frames(key);
        self.reading.pop();
    }

    /// Reads what process `pid` sent before it ended, so that its last requests
    /// (mail above all) are handled before its end is: its control connection,
    /// and on a cluster the connections not yet accepted or not yet greeted,
    /// one of which may be its. (A short-lived remote process's connections can
    /// all be waiting at once, its monitor's report of its end among them.)
    fn read_before_end(&mut self, pid: Pid) {
        if self.remote.is_some() {
            self.accept_processes();
            let greeting: Vec<usize> =
                self.conns.iter().filter(|(_, conn)| conn.role == Role::Greeting).map(|(key, _)| key).collect();
            for key in greeting {
                self.read(key);
            }
        }
        if let Some(key) = self.procs.get(&pid).and_then(|process| process.control) {
            self.read(key);
        }
    }

    fn read_frames(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut closed = read_available(&mut conn.stream, &mut conn.rbuf);
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            let (pid, role) = (conn.pid, conn.role);
            let frame = match codec::next_frame(&conn.rbuf[pos..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    if role != Role::Greeting {
                        let warning = format!("dropping the connection of {pid}, which sent a corrupt frame: {error}");
                        self.printer.warning(&warning);
                    }
                    closed = true;
                    break;
                }
            };
            let payload = &conn.rbuf[pos..][frame.payload.clone()];
            pos += frame.len;
            match role {
                Role::Monitor => match codec::decode::<Report>(payload) {
                    Ok(report) if self.remote.is_some() => {
                        if let Some(process) = self.procs.get_mut(&pid) {
                            process.monitor_heard = std::time::Instant::now();
                        }
                        self.on_report(pid, report)
                    }
                    Ok(report) => self.on_report(pid, report),
                    Err(error) => self.printer.warning(&format!("a corrupt report from the monitor of {pid}: {error}")),
                },
                Role::Control => match codec::decode::<Request>(payload) {
                    Ok(request) => self.on_request(pid, key, request),
                    Err(error) => self.printer.warning(&format!("a corrupt request from {pid}: {error}")),
                },
                Role::Greeting => match codec::decode::<Hello>(payload) {
                    Ok(hello) if hello.token == self.token => self.on_hello(key, hello),
                    // Not of this job: drop it without a word.
                    _ => {
                        closed = true;
                        break;
                    }
                },
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.rbuf.drain(..pos);
        }
        if closed {
            self.close_conn(key);
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while !conn.wbuf.is_empty() {
            match conn.stream.write(&conn.wbuf) {
                Ok(n) => drop(conn.wbuf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The process is gone; its monitor will report how.
                    conn.wbuf.clear();
                }
            }
        }
        let wanted = !conn.wbuf.is_empty();
        if wanted != conn.wants_output {
            let interest = if wanted { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            match self.poll.registry().reregister(&mut conn.stream, Token(key), interest) {
                Ok(()) => conn.wants_output = wanted,
                Err(error) => self.printer.warning(&format!("watching a connection for room to write: {error}")),
            }
        }
    }

    /// Queues `message` on connection `key` and writes what it can.
    fn send<M: serde::Serialize>(&mut self, key: usize, message: &M) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Err(error) = codec::append_frame(&mut conn.wbuf, KIND_MESSAGE, message) {
            self.printer.warning(&format!("encoding a message: {error}"));
            return;
        }
        self.flush(key);
    }

    fn reply(&mut self, key: usize, reply: &Reply) {
        self.send(key, reply);
    }

    /// Tells process `pid`, if it is alive.
    fn tell(&mut self, pid: Pid, reply: &Reply) {
        self.send_to(pid, Role::Control, reply);
    }

    /// Has the monitor of `pid` carry out `command`, if `pid` is alive.
    fn command(&mut self, pid: Pid, command: &Command) {
        self.send_to(pid, Role::Monitor, command);
    }

    /// Sends `message` on the `role` connection of `pid`, if `pid` is alive; a
    /// remote process that has not connected yet gets it once it does.
    fn send_to<M: serde::Serialize>(&mut self, pid: Pid, role: Role, message: &M) {
        let Some(process) = self.procs.get_mut(&pid).filter(|p| p.status.is_none()) else { return };
        let (key, early) = match role {
            Role::Monitor => (process.monitor, &mut process.early_monitor),
            _ => (process.control, &mut process.early_control),
        };
        match key {
            Some(key) => self.send(key, message),
            None => {
                if let Err(error) = codec::append_frame(early, KIND_MESSAGE, message) {
                    self.printer.warning(&format!("encoding a message: {error}"));
                }
            }
        }
    }

    fn alive(&self, pid: Pid) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.status.is_none())
    }

    fn on_report(&mut self, pid: Pid, report: Report) {
        match report {
            Report::Output { fd, data } => self.printer.output(pid, fd, &data),
            Report::Exited { status } => self.on_exit(pid, status),
            Report::CgroupFree => {
                if let Some(name) = self.procs.get_mut(&pid).and_then(|p| p.cgroup.take()) {
                    if self.prepared.len() < REUSED_CGROUPS {
                        self.prepared.push(name);
                    } else {
                        sys::remove_cgroups(&name);
                    }
                }
            }
            Report::Heartbeat => {}
        }
    }

    fn on_request(&mut self, from: Pid, key: usize, request: Request) {
        match request {
            Request::Spawn(request) if self.remote.is_some() => self.spawn_remote(from, request),
            Request::Spawn(SpawnRequest { id, resources, options, monitor, entry, arg, env }) => {
                let result = self.spawn(from, resources, &options, entry, arg, &env);
                if let (Ok(child), Some(monitor)) = (&result, monitor) {
                    if let Some(process) = self.procs.get_mut(child) {
                        process.monitors.push((from, monitor));
                    }
                }
                self.reply(key, &Reply::Spawned { id, result });
            }
            Request::Supervisor { event } => self.printer.supervisor(from, &event),
            Request::Watch { pid } => match self.procs.get_mut(&pid) {
                Some(process) if process.status.is_none() => process.watchers.push(from),
                _ => self.reply(key, &Reply::Ended { pid }),
            },
            Request::Monitor { id, pid } => match self.procs.get_mut(&pid) {
                Some(process) if process.status.is_none() => process.monitors.push((from, id)),
                _ => self.reply(key, &Reply::Down { id, pid, status: ExitStatus::NoProc }),
            },
            Request::Demonitor { pid } => {
                if let Some(process) = self.procs.get_mut(&pid) {
                    process.monitors.retain(|&(watcher, _)| watcher != from);
                }
            }
            Request::Link { pid } if pid == from => {}
            Request::Link { pid } if self.alive(pid) => self.link(from, pid),
            Request::Link { pid } => self.exit_signal(from, pid, &ExitStatus::NoProc),
            Request::Unlink { pid } => {
                for (a, b) in [(from, pid), (pid, from)] {
                    if let Some(process) = self.procs.get_mut(&a) {
                        process.links.retain(|&l| l != b);
                    }
                }
            }
            Request::TrapExits { on } => {
                if let Some(process) = self.procs.get_mut(&from) {
                    process.traps_exits = on;
                }
            }
            Request::Kill { pid } => self.command(pid, &Command::Kill { status: ExitStatus::Signal(libc::SIGKILL) }),
            Request::Shutdown { pid, timeout } => {
                self.command(pid, &Command::Terminate { timeout, status: ExitStatus::KilledBy(from) })
            }
            Request::Register { id, name } => {
                let result = match self.names.get(&name) {
                    Some(&holder) if holder != from && self.alive(holder) => {
                        Err(crate::RegisterError::Taken { name, by: holder })
                    }
                    _ => {
                        self.names.insert(name, from);
                        Ok(())
                    }
                };
                self.reply(key, &Reply::Registered { id, result });
            }
            Request::Unregister { name } => {
                if self.names.get(&name) == Some(&from) {
                    self.names.remove(&name);
                }
            }
            Request::Whereis { id, name } => {
                let pid = self.names.get(&name).copied().filter(|&p| self.alive(p));
                self.reply(key, &Reply::Found { id, pid });
            }
            Request::Capacity { id, resources } if self.remote.is_some() => self.ask_capacity(from, id, resources),
            Request::Capacity { id, resources } => {
                let count = crate::job::local_capacity(&resources) as u64;
                self.reply(key, &Reply::Capacity { id, count });
            }
            Request::Mail { to, mailbox, type_name, value } => {
                let target = match to {
                    MailTo::Pid(pid) => Some(pid),
                    MailTo::Name(name) => self.names.get(&name).copied(),
                };
                // As in Erlang, a value for a process that is gone is dropped.
                if let Some(target) = target {
                    self.tell(target, &Reply::Mail { from, mailbox, type_name, value });
                }
            }
        }
    }

    fn link(&mut self, a: Pid, b: Pid) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(process) = self.procs.get_mut(&x) {
                if !process.links.contains(&y) {
                    process.links.push(y);
                }
            }
        }
    }

    /// Delivers the exit signal of `from` (ended with `status`) to linked process
    /// `to`: a message if it traps exits, else its end if `status` is abnormal.
    fn exit_signal(&mut self, to: Pid, from: Pid, status: &ExitStatus) {
        let Some(process) = self.procs.get(&to).filter(|p| p.status.is_none()) else {
            return;
        };
        if process.traps_exits {
            self.tell(to, &Reply::Exit { pid: from, status: status.clone() });
        } else if !status.success() {
            self.command(to, &Command::Kill { status: ExitStatus::KilledBy(from) });
        }
    }

    /// Process `pid` has ended: show it, free what it reserved and its names, end
    /// the processes bound to it, and announce its end once they have ended.
    fn on_exit(&mut self, pid: Pid, status: ExitStatus) {
        if !self.alive(pid) {
            return;
        }
        self.read_before_end(pid);
        let Some(process) = self.procs.get_mut(&pid) else { return };
        if process.status.is_some() {
            return;
        }
        self.printer.exited(pid, &status);
        process.status = Some(status);
        self.live -= 1;
        self.reserved -= process.resources.mem.bytes();
        let bound = process.bound.clone();
        self.names.retain(|_, holder| *holder != pid);
        for child in bound {
            self.command(child, &Command::Kill { status: ExitStatus::KilledBy(pid) });
        }
        self.announce(pid);
        if self.remote.is_some() {
            self.check_starved();
        }
    }

    /// Tells whoever watches, monitors or is linked to `pid` that it has ended,
    /// once it and every process bound to it have; then does the same for the
    /// process it is bound to, which may have been waiting for it.
    fn announce(&mut self, pid: Pid) {
        let Some(process) = self.procs.get(&pid) else { return };
        let ready = !process.announced
            && process.status.is_some()
            && process.bound.iter().all(|b| self.procs.get(b).is_none_or(|p| p.announced));
        if !ready {
            return;
        }
        let process = self.procs.get_mut(&pid).expect("looked up above");
        process.announced = true;
        let status = process.status.clone().expect("checked above");
        let watchers = std::mem::take(&mut process.watchers);
        let monitors = std::mem::take(&mut process.monitors);
        let links = std::mem::take(&mut process.links);
        let bound_to = process.bound_to;
        for watcher in watchers {
            self.tell(watcher, &Reply::Ended { pid });
        }
        for (watcher, id) in monitors {
            self.tell(watcher, &Reply::Down { id, pid, status: status.clone() });
        }
        for linked in links {
            if let Some(process) = self.procs.get_mut(&linked) {
                process.links.retain(|&l| l != pid);
            }
            self.exit_signal(linked, pid, &status);
        }
        if let Some(parent) = bound_to {
            self.announce(parent);
        }
    }

    /// Reaps ended monitors. A monitor that died without reporting (killed) takes
    /// its process with it.
    fn reap(&mut self) {
        while let Some((os_pid, wait)) = sys::reap_any() {
            if let Ok(Some(zygote)) = &self.zygote {
                if zygote.os_pid() == os_pid {
                    // The processes it forked went with it; the next spawn starts another.
                    self.zygote = Ok(None);
                }
            }
            let Some(pid) = self.by_os_pid.remove(&os_pid.0) else {
                continue;
            };
            // Its last report may still be unread.
            if let Some(key) = self.procs.get(&pid).and_then(|p| p.monitor) {
                self.read(key);
            }
            if self.procs.get(&pid).is_some_and(|p| p.status.is_none()) {
                let status = match wait {
                    Some(sys::WaitStatus::Signaled(signal)) => ExitStatus::Signal(signal),
                    _ => ExitStatus::Signal(libc::SIGKILL),
                };
                self.on_exit(pid, status);
            }
        }
    }

    fn spawn(
        &mut self,
        parent: Pid,
        resources: Resources,
        options: &SpawnOptions,
        entry: isize,
        arg: Vec<u8>,
        env: &Environment,
    ) -> Result<Pid, SpawnError> {
        self.check_name(options)?;
        let wanted = self.reserved + resources.mem.bytes();
        if wanted > self.physical {
            if options.try_only {
                return Err(SpawnError::NoCapacity);
            }
            if !self.warned {
                self.warned = true;
                self.printer.warning(&format!(
                    "the job's processes now reserve {}, more than this machine's {} of memory; spawn goes ahead, try_spawn refuses",
                    crate::Mem::from_bytes(wanted),
                    crate::Mem::from_bytes(self.physical)
                ));
            }
        }
        let failed = |what: &str, error: io::Error| SpawnError::Failed(format!("{what}: {error}"));
        let (listener, local) =
            transport::bind_loopback().map_err(|e| failed("cannot bind a port on 127.0.0.1 and its Unix socket", e))?;
        let addr = listener.local_addr().map_err(|e| failed("reading the new port", e))?;
        let pid = Pid::new(addr, self.next_incarnation);
        self.next_incarnation += 1;
        let (monitor_bridge, monitor_end) =
            std::os::unix::net::UnixStream::pair().map_err(|e| failed("making a socket pair", e))?;
        let (control_bridge, control_end) =
            std::os::unix::net::UnixStream::pair().map_err(|e| failed("making a socket pair", e))?;
        let cgroup = match self.prepared.pop() {
            Some(prepared) => prepared,
            None => {
                // Made here, one at a time: processes that make their own at
                // once contend for the parent directory's lock.
                let name = self.cgroup_name(pid.incarnation());
                if self.cgroups_made.is_some() {
                    sys::prepare_cgroup(&name);
                }
                name
            }
        };
        let start = Start {
            incarnation: pid.incarnation(),
            cgroup: cgroup.clone(),
            parent: Some(parent),
            resources,
            token: self.token,
            bridge_os_pid: sys::getpid().0,
            bridge_addr: None,
            heartbeats: None,
            closure: Some((entry, arg)),
        };
        let start = codec::encode(&start).map_err(|e| SpawnError::Failed(e.to_string()))?;
        let start = sys::memfd_with(&start).map_err(|e| failed("making the spawn argument file", e))?;
        let fds = [
            monitor_end.as_raw_fd(),
            control_end.as_raw_fd(),
            listener.as_raw_fd(),
            local.as_raw_fd(),
            start.as_raw_fd(),
        ];
        // Forked from the zygote, the monitor is not this bridge's child: its
        // end shows as its connection closing.
        let monitor_os_pid = if self.zygote_for(env).is_some_and(|zygote| zygote.fork(&fds).is_ok()) {
            None
        } else {
            let fds_var = fds.map(|fd| fd.to_string()).join(",");
            let child = zygote::exec_program(env, self.job_group, &fds, &fds_var)
                .map_err(|e| failed("cannot start the process", e))?;
            Some(OsPid(child.id() as i32))
        };
        drop((monitor_end, control_end, listener, local, start));
        let added = self.add_process(pid, monitor_os_pid, resources).and_then(|()| {
            self.procs.get_mut(&pid).expect("added above").cgroup = Some(cgroup);
            self.attach(pid, monitor_bridge, Role::Monitor)?;
            self.attach(pid, control_bridge, Role::Control)
        });
        if let Err(error) = added {
            if let Some(monitor_os_pid) = monitor_os_pid {
                let _ = sys::kill(monitor_os_pid, libc::SIGKILL);
            }
            return Err(failed("watching the new process", error));
        }
        self.printer.spawned(parent, pid);
        // All before the new process can end: its exit report is read after this.
        self.apply_options(parent, pid, options);
        Ok(pid)
    }

    /// The zygote to fork a process with `env` from, started with `env` if there
    /// is none yet; `None` when the process must be exec'd.
    fn zygote_for(&mut self, env: &Environment) -> Option<&Zygote> {
        if let Ok(None) = self.zygote {
            self.zygote = Zygote::start(env, self.job_group).map(Some).map_err(|error| {
                self.printer
                    .warning(&format!("processes will be exec'd one by one: starting the zygote failed: {error}"));
            });
        }
        self.zygote.as_ref().ok()?.as_ref().filter(|zygote| zygote.serves(env))
    }

    /// Links, binds and registers a new process as its spawn asked.
    fn apply_options(&mut self, parent: Pid, pid: Pid, options: &SpawnOptions) {
        if options.link {
            self.link(parent, pid);
        }
        if options.bind {
            self.procs.get_mut(&pid).expect("added above").bound_to = Some(parent);
            if let Some(process) = self.procs.get_mut(&parent) {
                process.bound.push(pid);
            }
        }
        if let Some(name) = &options.register {
            self.names.insert(name.clone(), pid);
        }
    }

    /// Refuses a spawn that would register a name another live process holds.
    fn check_name(&self, options: &SpawnOptions) -> Result<(), SpawnError> {
        if let Some(name) = &options.register {
            if let Some(&holder) = self.names.get(name).filter(|&&h| self.alive(h)) {
                return Err(SpawnError::Failed(format!("the name {name:?} is already registered by {holder}")));
            }
        }
        Ok(())
    }
}

/// Appends to `into` what a non-blocking `stream` has now; true when the peer has
/// closed it (or it failed), so nothing more will come.
fn read_available(stream: &mut impl Read, into: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Reads away what the signal handler wrote.
fn drain_signals(pipe: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(pipe.read(&mut buf), Ok(n) if n > 0) {}
}

/// Copies the bridge's stdin to the top process, on a thread of its own so a
/// terminal is read with plain blocking reads.
fn forward_stdin(stdin: OwnedFd) {
    let _ = std::thread::Builder::new().name("constellation-stdin".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sys::read(0, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sys::write_all(stdin.as_raw_fd(), &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
}
