//! The bridge of a deployed job: spawns go to the master's scheduler, and each
//! process, started on some node, connects back to this bridge twice (its monitor
//! and itself), opening each connection with a `Hello` that carries the job's token.
//!
//! A process is admitted (given its `Pid`, answered to its parent, shown) by
//! whichever comes first: the scheduler's `Placed` or the process's `Hello`. Its end
//! is its monitor's report as on one machine; when the monitor could not report,
//! the scheduler says how it ended, or that its node was lost.

use super::{read_available, Bridge, Role};
use crate::{
    cluster::{Deployment, FromScheduler, ProcessImage, ToScheduler},
    codec,
    proto::{Environment, Heartbeats, Hello, Reply, SpawnRequest, Start, KIND_MESSAGE},
    sys, ExitStatus, Pid, Resources, SpawnError, SpawnOptions,
};
use mio::{
    event::Event,
    net::{TcpListener, UnixStream},
    Interest, Token,
};
use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd},
    time::{Duration, Instant},
};

/// The token of the connection to the master's scheduler.
pub(super) const SCHEDULER: Token = Token(usize::MAX - 10);
/// The token of the port remote processes connect to.
pub(super) const LISTENER: Token = Token(usize::MAX - 11);
/// The token of the top process's input.
pub(super) const STDIN: Token = Token(usize::MAX - 12);
/// How long the bridge waits for the connection of a monitor whose node has
/// said it ended before it takes the node's word for how its process ended.
/// That word can outrun the monitor's own connection (on a busy bridge, or over
/// a network that retransmits), which carries the last output and the report.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// A spawn the scheduler has not answered yet.
#[derive(Debug)]
struct Pending {
    /// The spawning process (`None` for the top process).
    parent: Option<Pid>,
    /// The id of the parent's `Request::Spawn`.
    request: u64,
    monitor: Option<u64>,
    options: SpawnOptions,
    resources: Resources,
    /// Whether it waits for room.
    queued: bool,
}

/// What a deployed bridge has beyond a local one.
#[derive(Debug)]
pub(super) struct Remote {
    scheduler: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    listener: TcpListener,
    addr: SocketAddr,
    /// Spawns not yet admitted, by incarnation.
    pending: HashMap<u64, Pending>,
    /// Admitted processes, by incarnation.
    admitted: HashMap<u64, Pid>,
    /// Capacity questions asked of the master: (asker, its request id), by the
    /// id the master answers.
    capacity_asks: HashMap<u64, (Pid, u64)>,
    next_ask: u64,
    /// The top process's input, and what of it its monitor has not been sent.
    stdin: Option<UnixStream>,
    stdin_buf: Vec<u8>,
    /// Whether the input has ended, and whether the top process has been told.
    stdin_ended: bool,
    stdin_closed: bool,
    /// How this bridge and its monitors watch each other, and when it last said
    /// it is alive.
    heartbeats: Heartbeats,
    last_beat: Instant,
    /// Processes whose node said their monitor ended before the monitor's
    /// connection came, with when to stop waiting for it (see [`REPORT_GRACE`]).
    unreported: Vec<(Pid, Instant)>,
}

impl Remote {
    /// How long the event loop may wait before the next heartbeat is due, or the
    /// next wait for a monitor's connection ends.
    pub(super) fn tick(&self) -> Duration {
        let beat = self.heartbeats.interval.saturating_sub(self.last_beat.elapsed());
        let grace = self.unreported.iter().map(|(_, until)| until.saturating_duration_since(Instant::now())).min();
        grace.map_or(beat, |grace| grace.min(beat)).max(Duration::from_millis(10))
    }

    /// Whether a spawn is still being placed (the job has not ended while one is).
    pub(super) fn placing(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl Bridge {
    pub(super) fn new_deployed(deployment: Deployment) -> io::Result<Bridge> {
        let Deployment { scheduler, bind, json, args, vars, resources, stdin, heartbeats, output } = deployment;
        let listener = sys::bind_ephemeral(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        scheduler.set_nonblocking(true)?;
        let mut scheduler = UnixStream::from_std(scheduler);
        // The top process's Pid is known once it is placed; until then this one
        // stands in (it names nothing).
        let placeholder = Pid::new(addr, 0);
        let mut bridge = Bridge::empty(sys::random_u64(), placeholder, sys::getpid(), json)?;
        bridge.printer = super::output::Printer::to_sink(json, output);
        bridge.poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        bridge.poll.registry().register(&mut scheduler, SCHEDULER, Interest::READABLE | Interest::WRITABLE)?;
        let environment = Environment { args, vars, cwd: Vec::new() };
        let stdin = match stdin {
            Some(stdin) => {
                stdin.set_nonblocking(true)?;
                let mut stdin = UnixStream::from_std(stdin);
                bridge.poll.registry().register(&mut stdin, STDIN, Interest::READABLE)?;
                Some(stdin)
            }
            None => None,
        };
        let stdin_ended = stdin.is_none();
        bridge.remote = Some(Remote {
            scheduler,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            listener,
            addr,
            pending: HashMap::new(),
            admitted: HashMap::new(),
            capacity_asks: HashMap::new(),
            next_ask: 0,
            stdin,
            stdin_buf: Vec::new(),
            stdin_ended,
            stdin_closed: false,
            heartbeats,
            last_beat: Instant::now(),
            unreported: Vec::new(),
        });
        bridge.next_incarnation = 1;
        let options = SpawnOptions::default();
        bridge.place(None, 0, resources, options, None, None, environment);
        Ok(bridge)
    }

    /// Asks the scheduler to start a process for `parent`'s spawn request.
    pub(super) fn spawn_remote(&mut self, parent: Pid, request: SpawnRequest) {
        let SpawnRequest { id, resources, options, monitor, entry, arg, env } = request;
        if let Err(error) = self.check_name(&options) {
            self.answer_spawn(parent, id, Err(error));
            return;
        }
        // A deployed process works in its node's scratch directory, not its parent's.
        let env = Environment { cwd: Vec::new(), ..env };
        self.place(Some(parent), id, resources, options, monitor, Some((entry, arg)), env);
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        parent: Option<Pid>,
        request: u64,
        resources: Resources,
        options: SpawnOptions,
        monitor: Option<u64>,
        closure: Option<(isize, Vec<u8>)>,
        env: Environment,
    ) {
        let Some(remote) = &self.remote else { return };
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let cgroup = self.cgroup_name(incarnation);
        let start = Start {
            incarnation,
            parent,
            resources,
            token: self.token,
            bridge_os_pid: 0,
            bridge_addr: Some(remote.addr),
            heartbeats: Some(remote.heartbeats),
            cgroup: cgroup.clone(),
            closure,
        };
        let start = match codec::encode(&start) {
            Ok(start) => start,
            Err(error) => return self.refuse(parent, request, SpawnError::Failed(error.to_string())),
        };
        let vars =
            env.vars.into_iter().filter(|(key, _)| !key.starts_with(b"CONSTELLATION_") || key == b"CONSTELLATION_LOG");
        let image = ProcessImage { start, args: env.args, vars: vars.collect(), cgroup };
        let queue = !options.try_only;
        let placement = options.placement;
        let pending = Pending { parent, request, monitor, options, resources, queued: false };
        if let Some(remote) = &mut self.remote {
            remote.pending.insert(incarnation, pending);
        }
        self.ask_scheduler(&ToScheduler::Place { id: incarnation, resources, queue, placement, image });
    }

    fn ask_scheduler(&mut self, message: &ToScheduler) {
        let Some(remote) = &mut self.remote else { return };
        if let Err(error) = codec::append_frame(&mut remote.wbuf, KIND_MESSAGE, message) {
            self.printer.warning(&format!("encoding a message to the scheduler: {error}"));
            return;
        }
        self.flush_scheduler();
    }

    fn flush_scheduler(&mut self) {
        let Some(remote) = &mut self.remote else { return };
        while !remote.wbuf.is_empty() {
            match remote.scheduler.write(&remote.wbuf) {
                Ok(n) => drop(remote.wbuf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.scheduler_lost(),
            }
        }
    }

    pub(super) fn on_scheduler_event(&mut self, event: &Event) {
        if event.is_writable() {
            self.flush_scheduler();
        }
        if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
            return;
        }
        let Some(remote) = &mut self.remote else { return };
        let mut closed = read_available(&mut remote.scheduler, &mut remote.rbuf);
        let mut messages = Vec::new();
        let mut pos = 0;
        while let Ok(Some(frame)) = codec::next_frame(&remote.rbuf[pos..]) {
            match codec::decode::<FromScheduler>(&remote.rbuf[pos..][frame.payload]) {
                Ok(message) => messages.push(message),
                Err(_) => closed = true,
            }
            pos += frame.len;
        }
        remote.rbuf.drain(..pos);
        for message in messages {
            self.on_scheduler_message(message);
        }
        if closed {
            self.scheduler_lost();
        }
    }

    /// Without the master nothing can be started or watched: stop the job.
    fn scheduler_lost(&mut self) {
        if self.stop.is_none() {
            self.printer.warning("the connection to the cluster's master was lost; stopping the job");
            self.stop = Some(libc::SIGTERM);
        }
    }

    fn on_scheduler_message(&mut self, message: FromScheduler) {
        match message {
            FromScheduler::Placed { id, addr } => self.admit(id, addr),
            FromScheduler::Queued { id } => {
                if let Some(pending) = self.remote.as_mut().and_then(|r| r.pending.get_mut(&id)) {
                    pending.queued = true;
                }
                self.check_starved();
            }
            FromScheduler::Refused { id, error } => {
                if let Some(pending) = self.remote.as_mut().and_then(|r| r.pending.remove(&id)) {
                    self.refuse(pending.parent, pending.request, error);
                }
            }
            FromScheduler::Ended { id, code, signal, lost } => self.on_monitor_ended(id, code, signal, lost),
            FromScheduler::Capacity { id, count } => {
                if let Some((asker, request)) = self.remote.as_mut().and_then(|r| r.capacity_asks.remove(&id)) {
                    self.tell(asker, &Reply::Capacity { id: request, count });
                }
            }
        }
    }

    /// The scheduler says the monitor of process `id` has ended.
    fn on_monitor_ended(&mut self, id: u64, code: Option<i32>, signal: Option<i32>, lost: bool) {
        let Some(remote) = &mut self.remote else { return };
        if let Some(pending) = remote.pending.remove(&id) {
            let error = if lost {
                SpawnError::Lost
            } else {
                SpawnError::Failed("it ended before it could reach the job's bridge".into())
            };
            return self.refuse(pending.parent, pending.request, error);
        }
        let Some(&pid) = remote.admitted.get(&id) else { return };
        let Some(process) = self.procs.get_mut(&pid) else { return };
        if lost {
            if let Some(key) = process.monitor {
                self.close_conn(key);
            }
            self.on_exit(pid, ExitStatus::Lost);
            return;
        }
        // A monitor that could not report: killed, or the binary never reached init.
        let status = match (signal, code) {
            (Some(signal), _) => ExitStatus::Signal(signal),
            (None, Some(0)) => ExitStatus::Success,
            (None, Some(code)) => ExitStatus::Code(code),
            (None, None) => ExitStatus::Signal(libc::SIGKILL),
        };
        if process.monitor.is_some() {
            // Its own report, if it sent one, is still to be read.
            process.monitor_ended = Some(status);
        } else if !process.monitor_greeted {
            // Its connection, with its last output and its report, may still come.
            process.monitor_ended = Some(status);
            remote.unreported.push((pid, Instant::now() + REPORT_GRACE));
        } else {
            self.on_exit(pid, status);
        }
    }

    /// Ends, as their nodes said they ended, the processes whose monitor's
    /// connection did not come within [`REPORT_GRACE`].
    pub(super) fn end_unreported(&mut self) {
        let Some(remote) = &mut self.remote else { return };
        if remote.unreported.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, waiting) = std::mem::take(&mut remote.unreported).into_iter().partition(|&(_, until)| until <= now);
        remote.unreported = waiting;
        for (pid, _) in due {
            let Some(process) = self.procs.get_mut(&pid).filter(|p| p.monitor.is_none()) else { continue };
            if let Some(status) = process.monitor_ended.take() {
                self.on_exit(pid, status);
            }
        }
    }

    /// Tells the spawner of a process that could not be started.
    fn refuse(&mut self, parent: Option<Pid>, request: u64, error: SpawnError) {
        match parent {
            Some(parent) => self.answer_spawn(parent, request, Err(error)),
            None => {
                // With nothing placed, the job ends here with exit code 1.
                self.printer.warning(&format!("the job's top process could not be started: {error}"));
            }
        }
    }

    fn answer_spawn(&mut self, parent: Pid, id: u64, result: Result<Pid, SpawnError>) {
        self.tell(parent, &Reply::Spawned { id, result });
    }

    /// Process `incarnation`, listening at `addr`, has started: give it its Pid.
    fn admit(&mut self, incarnation: u64, addr: SocketAddr) {
        let Some(remote) = &mut self.remote else { return };
        let Some(pending) = remote.pending.remove(&incarnation) else { return };
        let pid = Pid::new(addr, incarnation);
        remote.admitted.insert(incarnation, pid);
        if self.add_process(pid, None, pending.resources).is_err() {
            return;
        }
        match pending.parent {
            None => {
                self.top = pid;
                self.printer.top(pid);
            }
            Some(parent) => {
                self.printer.spawned(parent, pid);
                self.apply_options(parent, pid, &pending.options);
                if let (Some(id), Some(process)) = (pending.monitor, self.procs.get_mut(&pid)) {
                    process.monitors.push((parent, id));
                }
                self.answer_spawn(parent, pending.request, Ok(pid));
            }
        }
    }

    /// Accepts the connections of remote processes; each must greet first.
    pub(super) fn accept_processes(&mut self) {
        loop {
            let Some(remote) = &self.remote else { return };
            let stream = match remote.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.printer.warning(&format!("accepting a process's connection: {error}"));
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            // SAFETY: the fd is moved out of the TcpStream, so it has one owner. The
            // bridge uses stream sockets only through read, write and shutdown.
            let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(stream.into_raw_fd()) };
            let top = self.top;
            if let Err(error) = self.add_conn(stream, top, Role::Greeting) {
                self.printer.warning(&format!("watching a process's connection: {error}"));
            }
        }
    }

    /// A remote process (or its monitor) has said who it is.
    pub(super) fn on_hello(&mut self, key: usize, hello: Hello) {
        let Some(remote) = &self.remote else { return };
        if remote.pending.contains_key(&hello.incarnation) {
            self.admit(hello.incarnation, hello.addr);
        }
        let Some(remote) = &self.remote else { return };
        let pid = remote.admitted.get(&hello.incarnation).copied();
        let Some(process) = pid.and_then(|pid| self.procs.get_mut(&pid)).filter(|p| p.status.is_none()) else {
            // A process this job no longer waits for.
            if let Some(conn) = self.conns.get_mut(key) {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
            return;
        };
        let pid = pid.expect("found above");
        let role = if hello.monitor { Role::Monitor } else { Role::Control };
        let early = match role {
            Role::Monitor => {
                process.monitor = Some(key);
                process.monitor_greeted = true;
                std::mem::take(&mut process.early_monitor)
            }
            _ => {
                process.control = Some(key);
                std::mem::take(&mut process.early_control)
            }
        };
        if let Some(conn) = self.conns.get_mut(key) {
            conn.pid = pid;
            conn.role = role;
            conn.wbuf.extend_from_slice(&early);
        }
        self.flush(key);
    }

    /// Asks the master how many processes of `resources` the cluster holds, for
    /// `asker`'s request `request`.
    pub(super) fn ask_capacity(&mut self, asker: Pid, request: u64, resources: Resources) {
        let Some(remote) = &mut self.remote else { return };
        let id = remote.next_ask;
        remote.next_ask += 1;
        remote.capacity_asks.insert(id, (asker, request));
        self.ask_scheduler(&ToScheduler::Capacity { id, resources });
    }

    /// Tells every monitor this bridge is alive, once per interval, and declares
    /// lost each process whose monitor has been silent for the fence plus the
    /// margin: by then the monitor, if it lives, has killed it.
    pub(super) fn exchange_heartbeats(&mut self) {
        let Some(remote) = &mut self.remote else { return };
        let silent_limit = remote.heartbeats.fence + remote.heartbeats.margin;
        if remote.last_beat.elapsed() < remote.heartbeats.interval {
            return;
        }
        remote.last_beat = Instant::now();
        let alive: Vec<(Pid, bool)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.status.is_none())
            .map(|(&pid, p)| (pid, p.monitor_heard.elapsed() > silent_limit))
            .collect();
        for (pid, silent) in alive {
            if silent {
                self.printer.warning(&format!("{pid} has not been heard from for {silent_limit:?}: it is lost"));
                if let Some(key) = self.procs.get(&pid).and_then(|p| p.monitor) {
                    self.close_conn(key);
                }
                self.on_exit(pid, ExitStatus::Lost);
            } else if self.procs.get(&pid).is_some_and(|p| p.monitor.is_some()) {
                self.command(pid, &crate::proto::Command::Heartbeat);
            }
        }
    }

    /// Reads the top process's input as it comes.
    pub(super) fn read_stdin(&mut self) {
        let Some(remote) = &mut self.remote else { return };
        let Some(stdin) = &mut remote.stdin else { return };
        if !read_available(stdin, &mut remote.stdin_buf) {
            return;
        }
        remote.stdin_ended = true;
        if let Some(mut stdin) = remote.stdin.take() {
            let _ = self.poll.registry().deregister(&mut stdin);
        }
    }

    /// Sends the input read so far to the top process's monitor, once it has
    /// connected; then its end.
    pub(super) fn feed_stdin(&mut self) {
        let top = self.top;
        if self.procs.get(&top).and_then(|p| p.monitor).is_none() {
            return;
        }
        let Some(remote) = &mut self.remote else { return };
        if remote.stdin_closed || (remote.stdin_buf.is_empty() && !remote.stdin_ended) {
            return;
        }
        let data = std::mem::take(&mut remote.stdin_buf);
        let close = remote.stdin_ended;
        remote.stdin_closed = close;
        if !data.is_empty() {
            self.command(top, &crate::proto::Command::Stdin { data });
        }
        if close {
            self.command(top, &crate::proto::Command::Stdin { data: Vec::new() });
        }
    }

    /// A job whose every live process waits for room would wait forever: its
    /// queued spawns are answered `NoCapacity` instead.
    pub(super) fn check_starved(&mut self) {
        let Some(remote) = &self.remote else { return };
        let waiting: HashSet<Pid> = remote.pending.values().filter(|p| p.queued).filter_map(|p| p.parent).collect();
        if waiting.is_empty() {
            return;
        }
        let starved = self.procs.iter().filter(|(_, p)| p.status.is_none()).all(|(pid, _)| waiting.contains(pid));
        if starved {
            let ids = remote.pending.iter().filter(|(_, p)| p.queued).map(|(&id, _)| id).collect();
            self.ask_scheduler(&ToScheduler::Withdraw { ids });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto::Report, ExitStatus};
    use std::{
        io::Read,
        net::TcpStream,
        os::unix::net::UnixStream as StdUnixStream,
        sync::{mpsc, Arc, Mutex},
    };

    /// The next frame from `from`, decoded.
    fn read_message<T: serde::de::DeserializeOwned>(from: &mut StdUnixStream, buf: &mut Vec<u8>) -> T {
        loop {
            if let Some(frame) = codec::next_frame(buf).expect("a well-formed frame") {
                let message = codec::decode(&buf[frame.payload.clone()]).expect("a message");
                buf.drain(..frame.len);
                return message;
            }
            let mut chunk = [0u8; 4096];
            let n = from.read(&mut chunk).expect("reading from the bridge");
            assert!(n > 0, "the bridge closed its scheduler connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn frame<T: serde::Serialize>(message: &T) -> Vec<u8> {
        let mut frame = Vec::new();
        codec::append_frame(&mut frame, KIND_MESSAGE, message).expect("encoding");
        frame
    }

    /// On a real network, the master can say a monitor has ended before the
    /// monitor's own connection, with its output and its report, reaches the
    /// bridge (on a busy machine, before the bridge has accepted it). The
    /// report still decides, and the output is still printed.
    #[test]
    fn a_monitors_report_that_comes_after_its_nodes_word_still_counts() {
        let (scheduler, mut master) = StdUnixStream::pair().expect("a socket pair");
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = printed.clone();
        let deployment = Deployment {
            scheduler,
            bind: "127.0.0.1".parse().expect("an address"),
            json: false,
            args: vec![b"top".to_vec()],
            vars: Vec::new(),
            resources: Resources::default(),
            stdin: None,
            heartbeats: Heartbeats {
                interval: Duration::from_millis(100),
                fence: Duration::from_secs(30),
                margin: Duration::from_secs(5),
            },
            output: Box::new(move |fd, data| {
                if fd == 1 {
                    sink.lock().expect("the output").extend_from_slice(data)
                }
            }),
        };
        let (done, code) = mpsc::channel();
        std::thread::spawn(move || done.send(Bridge::new_deployed(deployment).expect("a bridge").run()));

        let mut buf = Vec::new();
        let ToScheduler::Place { id, image, .. } = read_message(&mut master, &mut buf) else {
            panic!("the bridge's first message places the top process")
        };
        let start: Start = codec::decode(&image.start).expect("a start record");
        let addr: SocketAddr = "127.0.0.2:4000".parse().expect("an address");
        // The node: the process started, and its monitor has ended (with code 0,
        // as monitors do).
        let mut told = frame(&FromScheduler::Placed { id, addr });
        told.extend(frame(&FromScheduler::Ended { id, code: Some(0), signal: None, lost: false }));
        master.write_all(&told).expect("writing to the bridge");
        std::thread::sleep(Duration::from_millis(200));
        // Only now does the monitor's connection arrive.
        let mut monitor = TcpStream::connect(start.bridge_addr.expect("the bridge's address"))
            .expect("the bridge still waits for the monitor's connection");
        let mut said = frame(&Hello { token: start.token, incarnation: start.incarnation, addr, monitor: true });
        said.extend(frame(&Report::Output { fd: 1, data: b"the top process ran\n".to_vec() }));
        said.extend(frame(&Report::Exited { status: ExitStatus::Code(7) }));
        monitor.write_all(&said).expect("writing to the bridge");
        drop(monitor);

        let code = code.recv_timeout(Duration::from_secs(20)).expect("the bridge ends");
        assert_eq!(String::from_utf8_lossy(&printed.lock().expect("the output")), "the top process ran\n");
        assert_eq!(code, 7, "the exit code the monitor reported");
    }
}
