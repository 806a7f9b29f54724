//! The master: connects to every node of `nodes.toml`, places each spawn of each
//! deployed job on a node with room for its `Resources` (free memory; the least
//! loaded by CPU share and memory), sends
//! a node each binary once, releases resources when processes end, queues spawns
//! that wait for room, and watches the nodes' heartbeats: a node silent for its
//! lease plus a margin is lost, and its processes are reported `Lost` to their
//! jobs' bridges (by then their monitors have fenced them), spawns still on
//! their way there included. A lost node is tried again until it answers, and
//! then joins as a new one. Everything sent to a node goes through its
//! `NodeLink`'s thread, so a node that stops reading holds up nothing else;
//! likewise each job's bridge is written to by a thread of its own.

use crate::{
    auth::{self, Role},
    config::NodeSpec,
    node_link::{NodeLink, Outgoing},
    wire::{read_frame, write_frame, FromNode, ToNode, MAX_FRAME},
};
use constellation::{
    cluster::{FromScheduler, ProcessImage, ToScheduler},
    Placement, Resources, SpawnError,
};
use parking_lot::Mutex;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{mpsc, Arc, Weak},
    time::{Duration, Instant},
};

/// The timings of failure detection.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often nodes send heartbeats.
    pub heartbeat: Duration,
    /// How long an acknowledged heartbeat keeps a node's processes alive.
    pub lease: Duration,
    /// How long after the lease a silent node's processes are declared lost
    /// (covers killing and reaping them).
    pub margin: Duration,
    /// How long to keep trying to reach a node at start.
    pub connect: Duration,
}

/// The largest message from a bridge (a spawn carries its closure).
const MAX_BRIDGE_FRAME: usize = 256 << 20;

/// One node as the master sees it.
struct NodeState {
    spec: NodeSpec,
    /// What the master sends it goes through here, while it is connected.
    link: Option<NodeLink>,
    used_mem: u64,
    used_cpu: f64,
    processes: usize,
    /// Whether its connection is up (placements go only to reachable nodes).
    reachable: bool,
    /// Whether it has been declared lost (until it joins again).
    lost: bool,
    last_heartbeat: Instant,
    /// Counts its connections, so a stale connection's end is not taken for
    /// the current one's.
    generation: u64,
}

impl NodeState {
    /// Whether it has room for `resources`. Memory is reserved; CPU is a share
    /// (a weight, as on one machine), so it spreads load but does not refuse.
    fn fits(&self, resources: &Resources) -> bool {
        self.spec.cpu.cores() > 0.0
            && self.reachable
            && !self.lost
            && self.used_mem + resources.mem.bytes() <= self.spec.mem.bytes()
    }

    /// Gives back what a process of `resources` held.
    fn free(&mut self, resources: &Resources) {
        self.used_mem = self.used_mem.saturating_sub(resources.mem.bytes());
        self.used_cpu = (self.used_cpu - resources.cpu.cores()).max(0.0);
        self.processes = self.processes.saturating_sub(1);
    }

    /// How loaded it is, for spreading: the larger of its CPU and memory shares.
    fn load(&self) -> f64 {
        let cpu = self.used_cpu / self.spec.cpu.cores().max(1e-9);
        let mem = self.used_mem as f64 / (self.spec.mem.bytes().max(1) as f64);
        cpu.max(mem)
    }
}

struct Job {
    /// The queue to the thread that writes to the job's bridge: a bridge that
    /// stops reading (stopped, or hung) holds up that thread alone, never the
    /// reading of a node's heartbeats that reported its processes' ends.
    bridge: mpsc::Sender<FromScheduler>,
    /// The node after the one its last round-robin placement went to.
    next_node: usize,
    hash: String,
    binary: PathBuf,
    /// Each live process's node and resources.
    processes: HashMap<u64, (usize, Resources)>,
    /// Every node the job has had a process on: each may hold its zygote.
    hosts: HashSet<usize>,
}

struct Waiting {
    job: u64,
    id: u64,
    resources: Resources,
    placement: Placement,
    image: ProcessImage,
}

#[derive(Default)]
struct State {
    jobs: HashMap<u64, Job>,
    queue: VecDeque<Waiting>,
    next_job: u64,
}

/// The master's scheduler, shared by its threads.
pub struct Master {
    timing: Timing,
    cookie: Vec<u8>,
    nodes: Mutex<Vec<NodeState>>,
    state: Mutex<State>,
    /// Set by `disconnect`: lost connections are then expected.
    closing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master").field("timing", &self.timing).finish_non_exhaustive()
    }
}

/// A spawn placed on a node, to be sent there.
struct Dispatch {
    node: usize,
    job: u64,
    id: u64,
    image: ProcessImage,
}

impl Master {
    /// Connects to every node of `nodes` (retrying with backoff for
    /// `timing.connect`), then watches them; fails naming the nodes it could
    /// not reach.
    pub fn start(nodes: Vec<NodeSpec>, cookie: Option<Vec<u8>>, timing: Timing) -> Result<Arc<Master>, String> {
        let cookie = cookie.unwrap_or_default();
        let master = Arc::new(Master {
            timing,
            cookie,
            nodes: Mutex::new(
                nodes
                    .into_iter()
                    .map(|spec| NodeState {
                        spec,
                        link: None,
                        used_mem: 0,
                        used_cpu: 0.0,
                        processes: 0,
                        reachable: false,
                        lost: false,
                        last_heartbeat: Instant::now(),
                        generation: 0,
                    })
                    .collect(),
            ),
            state: Mutex::new(State { next_job: 1, ..State::default() }),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let count = master.nodes.lock().len();
        let connecting: Vec<_> = (0..count)
            .map(|index| {
                let master = master.clone();
                std::thread::spawn(move || master.connect_node(index))
            })
            .collect();
        let mut failures = Vec::new();
        for handle in connecting {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failures.push(error),
                Err(_) => failures.push("a connecting thread panicked".to_string()),
            }
        }
        if !failures.is_empty() {
            return Err(failures.join("\n"));
        }
        let watcher = master.clone();
        std::thread::Builder::new()
            .name("lease-watch".into())
            .spawn(move || watcher.watch_leases())
            .map_err(|e| e.to_string())?;
        Ok(master)
    }

    fn connect_node(self: &Arc<Self>, index: usize) -> Result<(), String> {
        let spec = self.nodes.lock()[index].spec.clone();
        if spec.cpu.cores() == 0.0 && spec.fabric_addr.port() == 0 {
            return Ok(());
        }
        let addr = spec.fabric_addr;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(stream) => break stream,
                Err(error) if started.elapsed() >= self.timing.connect => {
                    return Err(format!(
                    "cannot reach the node at {addr} after {:.0} s: {error} (is `constellation {addr}` running there?)",
                    started.elapsed().as_secs_f64()
                ))
                }
                Err(error) => {
                    log::debug!("node {addr} not reachable yet ({error}); retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.join(index, stream)
    }

    /// Authenticates a new connection to node `index`, and serves it.
    fn join(self: &Arc<Self>, index: usize, mut stream: TcpStream) -> Result<(), String> {
        let spec = self.nodes.lock()[index].spec.clone();
        let addr = spec.fabric_addr;
        auth::connect(&mut stream, &self.cookie, Role::Master).map_err(|e| format!("the node at {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let config = ToNode::Config {
            heartbeat_ms: self.timing.heartbeat.as_millis() as u64,
            lease_ms: self.timing.lease.as_millis() as u64,
        };
        write_frame(&mut stream, &config).map_err(|e| format!("the node at {addr}: {e}"))?;
        let cached = match read_frame(&mut stream, MAX_FRAME) {
            Ok(FromNode::Ready { cached }) => cached,
            Ok(other) => return Err(format!("the node at {addr} answered {other:?} instead of Ready")),
            Err(error) => return Err(format!("the node at {addr}: {error}")),
        };
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let master = Arc::downgrade(self);
        let unsent = Box::new(move |job, id| {
            if let Some(master) = Weak::upgrade(&master) {
                master.lose_unsent(job, id);
            }
        });
        // What it had before it was lost, it has no more (or may not have).
        let link = NodeLink::start(writer, addr, cached.into_iter().collect(), unsent).map_err(|e| e.to_string())?;
        let generation = {
            let mut nodes = self.nodes.lock();
            let node = &mut nodes[index];
            if let Some(stale) = node.link.replace(link) {
                stale.close();
            }
            node.reachable = true;
            node.lost = false;
            node.last_heartbeat = Instant::now();
            node.generation += 1;
            node.generation
        };
        log::info!("node {addr} joined ({}, {} cores)", spec.mem, spec.cpu.cores());
        let master = self.clone();
        std::thread::Builder::new()
            .name(format!("node {addr}"))
            .spawn(move || master.read_node(index, generation, stream))
            .map_err(|e| e.to_string())?;
        self.place_waiting();
        Ok(())
    }

    /// Tries to reach a lost node again until it answers (it restarted, or the
    /// network healed); it then joins as new.
    fn rejoin(self: Arc<Self>, index: usize) {
        let addr = self.nodes.lock()[index].spec.fabric_addr;
        let mut backoff = Duration::from_millis(500);
        while !self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { continue };
            match self.join(index, stream) {
                Ok(()) => return,
                Err(error) => log::debug!("node {addr} did not rejoin: {error}"),
            }
        }
    }

    fn read_node(self: Arc<Self>, index: usize, generation: u64, mut stream: TcpStream) {
        let addr = self.nodes.lock()[index].spec.fabric_addr;
        let error = loop {
            let message = match read_frame::<FromNode>(&mut stream, MAX_FRAME) {
                Ok(message) => message,
                Err(error) => break error,
            };
            match message {
                FromNode::Heartbeat { seq } => {
                    let mut nodes = self.nodes.lock();
                    nodes[index].last_heartbeat = Instant::now();
                    if let Some(link) = &nodes[index].link {
                        link.send(Outgoing::Ack(seq));
                    }
                }
                FromNode::Started { job, id, port } => {
                    let addr = SocketAddr::new(addr.ip(), port);
                    self.tell_bridge(job, FromScheduler::Placed { id, addr });
                }
                FromNode::Failed { job, id, error } => {
                    self.release(job, id);
                    self.tell_bridge(job, FromScheduler::Refused { id, error: SpawnError::Failed(error) });
                    self.place_waiting();
                }
                FromNode::Ended { job, id, code, signal } => {
                    self.release(job, id);
                    self.tell_bridge(job, FromScheduler::Ended { id, code, signal, lost: false });
                    self.place_waiting();
                }
                FromNode::Ready { .. } => {}
            }
        };
        let mut nodes = self.nodes.lock();
        if nodes[index].generation != generation {
            return;
        }
        nodes[index].reachable = false;
        if !nodes[index].lost && !self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            log::warn!(
                "the connection to node {addr} was lost ({error}); its processes are declared lost if it stays silent for {:?}",
                self.timing.lease + self.timing.margin
            );
        }
    }

    /// Declares lost every node silent for longer than its lease plus the margin.
    fn watch_leases(self: Arc<Self>) {
        let limit = self.timing.lease + self.timing.margin;
        let tick = (self.timing.heartbeat / 2).clamp(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            std::thread::sleep(tick);
            let lost: Vec<usize> = {
                let mut nodes = self.nodes.lock();
                let mut lost = Vec::new();
                for (index, node) in nodes.iter_mut().enumerate() {
                    if node.link.is_some() && !node.lost && node.last_heartbeat.elapsed() > limit {
                        node.lost = true;
                        node.reachable = false;
                        if let Some(link) = node.link.take() {
                            link.close();
                        }
                        lost.push(index);
                    }
                }
                lost
            };
            for index in lost {
                self.declare_lost(index);
                let master = self.clone();
                let _ = std::thread::Builder::new().name("rejoin".into()).spawn(move || master.rejoin(index));
            }
        }
    }

    fn declare_lost(&self, index: usize) {
        let addr = self.nodes.lock()[index].spec.fabric_addr;
        let mut victims = Vec::new();
        {
            let mut state = self.state.lock();
            for (&job, entry) in &mut state.jobs {
                entry.processes.retain(|&id, &mut (node, _)| {
                    if node == index {
                        victims.push((job, id));
                    }
                    node != index
                });
            }
        }
        {
            let mut nodes = self.nodes.lock();
            nodes[index].used_mem = 0;
            nodes[index].used_cpu = 0.0;
            nodes[index].processes = 0;
        }
        log::warn!(
            "node {addr} is lost: no heartbeat for {:?}; its {} processes are declared lost",
            self.timing.lease + self.timing.margin,
            victims.len()
        );
        for (job, id) in victims {
            self.tell_bridge(job, FromScheduler::Ended { id, code: None, signal: None, lost: true });
        }
    }

    /// Queues `message` for the bridge of `job`; never blocks.
    fn tell_bridge(&self, job: u64, message: FromScheduler) {
        if let Some(job) = self.state.lock().jobs.get(&job) {
            // The writer ends only when the job is removed, with its queue.
            let _ = job.bridge.send(message);
        }
    }

    /// Frees what process `id` of `job` held; returns whether it held anything
    /// (it was still placed).
    fn release(&self, job: u64, id: u64) -> bool {
        let placed = self.state.lock().jobs.get_mut(&job).and_then(|j| j.processes.remove(&id));
        if let Some((index, resources)) = &placed {
            self.nodes.lock()[*index].free(resources);
        }
        placed.is_some()
    }

    /// A spawn that could not be sent to its node is lost with it (a fan-out
    /// places it again elsewhere), unless the node was declared lost first,
    /// which told the bridge.
    fn lose_unsent(&self, job: u64, id: u64) {
        if self.release(job, id) {
            self.tell_bridge(job, FromScheduler::Refused { id, error: SpawnError::Lost });
            self.place_waiting();
        }
    }

    /// Picks a node with room for a process of `job` (the least loaded, or the
    /// next in turn) and reserves the room there.
    fn reserve(&self, state: &mut State, job: u64, resources: &Resources, placement: Placement) -> Option<usize> {
        let mut nodes = self.nodes.lock();
        let index = match placement {
            Placement::LeastLoaded => nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.fits(resources))
                .min_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()).then(a.processes.cmp(&b.processes)))
                .map(|(index, _)| index)?,
            Placement::RoundRobin => {
                let entry = state.jobs.get_mut(&job)?;
                let count = nodes.len();
                let index = (0..count)
                    .map(|step| (entry.next_node + step) % count)
                    .find(|&index| nodes[index].fits(resources))?;
                entry.next_node = index + 1;
                index
            }
        };
        let node = &mut nodes[index];
        node.used_mem += resources.mem.bytes();
        node.used_cpu += resources.cpu.cores();
        node.processes += 1;
        Some(index)
    }

    /// How many processes of `resources` the nodes hold now: on each, its free
    /// memory over `resources.mem` or its cores over `resources.cpu`, whichever
    /// is less.
    fn capacity(&self, resources: &Resources) -> u64 {
        self.nodes
            .lock()
            .iter()
            .filter(|n| n.spec.cpu.cores() > 0.0 && n.reachable && !n.lost)
            .map(|n| {
                let by_memory = n.spec.mem.bytes().saturating_sub(n.used_mem) / resources.mem.bytes().max(1);
                let by_cpu = (n.spec.cpu.cores() / resources.cpu.cores().max(1.0 / 1024.0)) as u64;
                by_memory.min(by_cpu)
            })
            .sum()
    }

    /// Whether any node could ever hold `resources`.
    fn could_ever_fit(&self, resources: &Resources) -> bool {
        self.nodes
            .lock()
            .iter()
            .any(|n| !n.lost && n.spec.cpu.cores() > 0.0 && resources.mem.bytes() <= n.spec.mem.bytes())
    }

    /// Closes every node connection (the nodes kill their processes).
    pub fn disconnect(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        for node in self.nodes.lock().iter_mut() {
            node.reachable = false;
            if let Some(link) = node.link.take() {
                link.close();
            }
        }
    }

    /// Registers a deployed job whose bridge talks on `bridge`; returns its id.
    pub fn add_job(self: &Arc<Self>, bridge: UnixStream, hash: String, binary: PathBuf) -> io::Result<u64> {
        let reader = bridge.try_clone()?;
        let (queue, queued) = mpsc::channel();
        let job = {
            let mut state = self.state.lock();
            state.next_job += 1;
            state.next_job - 1
        };
        std::thread::Builder::new().name(format!("to job {job}")).spawn(move || write_bridge(job, bridge, queued))?;
        self.state.lock().jobs.insert(
            job,
            Job { bridge: queue, hash, binary, next_node: 0, processes: HashMap::new(), hosts: HashSet::new() },
        );
        let master = self.clone();
        if let Err(error) =
            std::thread::Builder::new().name(format!("job {job}")).spawn(move || master.read_bridge(job, reader))
        {
            // Nobody would ever end the job: end it now.
            self.end_job(job);
            return Err(error);
        }
        Ok(job)
    }

    fn read_bridge(self: Arc<Self>, job: u64, mut stream: UnixStream) {
        loop {
            match read_frame::<ToScheduler>(&mut stream, MAX_BRIDGE_FRAME) {
                Ok(ToScheduler::Place { id, resources, queue, placement, image }) => {
                    self.place(job, id, resources, queue, placement, image)
                }
                Ok(ToScheduler::Capacity { id, resources }) => {
                    let count = self.capacity(&resources);
                    self.tell_bridge(job, FromScheduler::Capacity { id, count });
                }
                Ok(ToScheduler::Withdraw { ids }) => {
                    let withdrawn: Vec<u64> = {
                        let mut state = self.state.lock();
                        let mut withdrawn = Vec::new();
                        state.queue.retain(|w| {
                            let out = w.job == job && ids.contains(&w.id);
                            if out {
                                withdrawn.push(w.id);
                            }
                            !out
                        });
                        withdrawn
                    };
                    for id in withdrawn {
                        self.tell_bridge(job, FromScheduler::Refused { id, error: SpawnError::NoCapacity });
                    }
                }
                Err(error) => {
                    if error.kind() != io::ErrorKind::UnexpectedEof {
                        log::warn!("the bridge of job {job} sent a bad message: {error}");
                    }
                    break;
                }
            }
        }
        self.end_job(job);
    }

    /// The job's bridge has gone: kill what is left of the job and free its room.
    fn end_job(&self, job: u64) {
        let entry = {
            let mut state = self.state.lock();
            state.queue.retain(|w| w.job != job);
            state.jobs.remove(&job)
        };
        let Some(entry) = entry else { return };
        let hosts = entry.hosts;
        {
            let mut nodes = self.nodes.lock();
            for (index, resources) in entry.processes.values() {
                nodes[*index].free(resources);
            }
        }
        let nodes = self.nodes.lock();
        for link in hosts.into_iter().filter_map(|index| nodes[index].link.as_ref()) {
            link.send(Outgoing::KillJob(job));
        }
        drop(nodes);
        log::info!("job {job} ended");
        self.place_waiting();
    }

    fn place(&self, job: u64, id: u64, resources: Resources, queue: bool, placement: Placement, image: ProcessImage) {
        let placed = {
            let mut state = self.state.lock();
            let node = self.reserve(&mut state, job, &resources, placement);
            if let (Some(node), Some(entry)) = (node, state.jobs.get_mut(&job)) {
                entry.processes.insert(id, (node, resources));
                entry.hosts.insert(node);
            }
            node
        };
        match placed {
            Some(node) => self.dispatch(Dispatch { node, job, id, image }),
            None if queue && self.could_ever_fit(&resources) => {
                self.state.lock().queue.push_back(Waiting { job, id, resources, placement, image });
                self.tell_bridge(job, FromScheduler::Queued { id });
            }
            None => self.tell_bridge(job, FromScheduler::Refused { id, error: SpawnError::NoCapacity }),
        }
    }

    /// Places the waiting spawns that now fit, in the order they came.
    fn place_waiting(&self) {
        let ready: Vec<Dispatch> = {
            let mut state = self.state.lock();
            let mut ready = Vec::new();
            let mut index = 0;
            while index < state.queue.len() {
                let (job, resources, placement) =
                    (state.queue[index].job, state.queue[index].resources, state.queue[index].placement);
                match self.reserve(&mut state, job, &resources, placement) {
                    Some(node) => {
                        let waiting = state.queue.remove(index).expect("index is in range");
                        if let Some(entry) = state.jobs.get_mut(&waiting.job) {
                            entry.processes.insert(waiting.id, (node, resources));
                            entry.hosts.insert(node);
                        }
                        ready.push(Dispatch { node, job: waiting.job, id: waiting.id, image: waiting.image });
                    }
                    None => index += 1,
                }
            }
            ready
        };
        for dispatch in ready {
            self.dispatch(dispatch);
        }
    }

    /// Queues a placed spawn to its node (which gets the job's binary first if
    /// it lacks it).
    fn dispatch(&self, dispatch: Dispatch) {
        let Dispatch { node, job, id, image } = dispatch;
        let Some((hash, binary)) = self.state.lock().jobs.get(&job).map(|j| (j.hash.clone(), j.binary.clone())) else {
            self.release(job, id);
            return;
        };
        let nodes = self.nodes.lock();
        match &nodes[node].link {
            Some(link) => link.send(Outgoing::Spawn { job, id, hash, binary, image }),
            None => {
                log::warn!("sending a process to node {}: the node is not connected", nodes[node].spec.fabric_addr);
                drop(nodes);
                self.lose_unsent(job, id);
            }
        }
    }
}

/// Writes what is queued for the bridge of `job` until the job is removed (its
/// queue dropped) or the bridge is gone.
fn write_bridge(job: u64, mut bridge: UnixStream, queued: mpsc::Receiver<FromScheduler>) {
    for message in queued {
        if let Err(error) = write_frame(&mut bridge, &message) {
            log::debug!("telling the bridge of job {job}: {error}");
            return;
        }
    }
}
