//! `NodeLink`: the master's sending side of its connection to one node. A thread
//! of its own writes what the master queues (spawns, each with the job's binary
//! the first time, job kills, heartbeat acknowledgements), so a node that stops
//! reading holds up that thread alone, never the master's scheduling or the
//! reading of other nodes.

use crate::wire::{write_frame, ToNode, CHUNK};
use constellation::cluster::ProcessImage;
use std::{
    collections::{HashSet, VecDeque},
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender},
};

/// What the master sends a node.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Acknowledges heartbeat `seq`: these go out between the chunks of a binary.
    Ack(u64),
    /// Kill what is left of a job there.
    KillJob(u64),
    /// Start process `id` of `job`, from the binary at `binary` (sent first,
    /// unless the node has the one named `hash`).
    Spawn { job: u64, id: u64, hash: String, binary: PathBuf, image: ProcessImage },
}

/// Called with `(job, id)` for each spawn that could not be written to the node.
pub(crate) type Unsent = Box<dyn Fn(u64, u64) + Send>;

/// The queue to one node's writer thread. Dropping it ends the thread once it
/// has written (or given up on) what is queued.
#[derive(Debug)]
pub(crate) struct NodeLink {
    queue: Sender<Outgoing>,
    /// The connection, to shut it down from any thread, whatever the writer does.
    socket: TcpStream,
}

impl NodeLink {
    /// Starts the writer of `stream` to the node at `addr`, which holds the
    /// binaries named in `cached`.
    pub(crate) fn start(
        stream: TcpStream,
        addr: SocketAddr,
        cached: HashSet<String>,
        unsent: Unsent,
    ) -> io::Result<NodeLink> {
        let socket = stream.try_clone()?;
        let (queue, queued) = mpsc::channel();
        let writer = Writer { stream, addr, binaries: cached, queued, backlog: VecDeque::new(), unsent };
        std::thread::Builder::new().name(format!("to node {addr}")).spawn(move || writer.run())?;
        Ok(NodeLink { queue, socket })
    }

    /// Queues `item`; never blocks.
    pub(crate) fn send(&self, item: Outgoing) {
        // The writer outlives every sender: the send cannot fail.
        let _ = self.queue.send(item);
    }

    /// Shuts the connection down: a write blocked on a node that stopped reading
    /// fails at once, and so does the node's reader.
    pub(crate) fn close(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// The writer thread's state.
struct Writer {
    stream: TcpStream,
    addr: SocketAddr,
    /// The binaries the node has.
    binaries: HashSet<String>,
    queued: Receiver<Outgoing>,
    /// What came while a binary was being sent, in order (acknowledgements
    /// excepted, which went out at once).
    backlog: VecDeque<Outgoing>,
    unsent: Unsent,
}

impl Writer {
    /// Writes what is queued until the link is dropped. After a failed write,
    /// every spawn still to come is unsent.
    fn run(mut self) {
        let mut failed = false;
        while let Some(item) = self.backlog.pop_front().or_else(|| self.queued.recv().ok()) {
            if failed {
                if let Outgoing::Spawn { job, id, .. } = item {
                    (self.unsent)(job, id);
                }
                continue;
            }
            if let Err(error) = self.write(item) {
                if error.kind() != io::ErrorKind::NotConnected {
                    log::warn!("writing to node {}: {error}", self.addr);
                }
                let _ = self.stream.shutdown(Shutdown::Both);
                failed = true;
            }
        }
    }

    fn write(&mut self, item: Outgoing) -> io::Result<()> {
        match item {
            Outgoing::Ack(seq) => write_frame(&mut self.stream, &ToNode::HeartbeatAck { seq }),
            Outgoing::KillJob(job) => write_frame(&mut self.stream, &ToNode::KillJob { job }),
            Outgoing::Spawn { job, id, hash, binary, image } => {
                let sent = self
                    .send_binary(&hash, &binary)
                    .and_then(|()| write_frame(&mut self.stream, &ToNode::Spawn { job, id, hash, image }));
                if sent.is_err() {
                    (self.unsent)(job, id);
                }
                sent
            }
        }
    }

    /// Sends the binary named `hash`, read from `path`, unless the node has it;
    /// acknowledges heartbeats between its chunks.
    fn send_binary(&mut self, hash: &str, path: &PathBuf) -> io::Result<()> {
        if self.binaries.contains(hash) {
            return Ok(());
        }
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let mut chunk = vec![0u8; CHUNK];
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut chunk)?;
            sent += n as u64;
            let last = n == 0 || sent >= size;
            write_frame(&mut self.stream, &ToNode::BinaryChunk { hash: hash.to_string(), len: n as u32, last })?;
            self.stream.write_all(&chunk[..n])?;
            if last {
                break;
            }
            while let Ok(item) = self.queued.try_recv() {
                match item {
                    Outgoing::Ack(seq) => write_frame(&mut self.stream, &ToNode::HeartbeatAck { seq })?,
                    other => self.backlog.push_back(other),
                }
            }
        }
        log::info!("sent binary {hash} to node {}", self.addr);
        self.binaries.insert(hash.to_string());
        Ok(())
    }
}
