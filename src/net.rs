//! The connections of one process: the listening port, one duplex TCP connection
//! per peer process (with its handshake), and the control connection to the bridge.
//!
//! All of it lives in one [`Net`] behind one lock, shared by the reactor thread
//! (which handles readiness) and the user's threads (which read and write inline
//! where they can, so a message costs no thread hop).
//!
//! # The peer protocol
//! The side that connects sends `HELLO(from, to, token)` and waits. The other side
//! answers `ACCEPT`, `REJECT` (keep the connection I opened to you instead: when two
//! processes connect to each other at once, the one opened by the lower `Pid`
//! wins) or `REFUSE(reason)` (wrong job or a stale `Pid`). After `ACCEPT`, frames
//! flow both ways: `OPEN(type name)` when a `Sender` is made, `DATA(value)` per
//! value and `CLOSE` when the `Sender` is dropped. End of file means the peer
//! process has ended.

use crate::{
    attention::{Attention, Registration},
    block,
    codec::{self, CodecError},
    inbox::Inbox,
    lane::Lane,
    pid::PidMap,
    proto::{Reply, Request, KIND_MESSAGE},
    sys,
    transport::Stream,
    Exit, Pid,
};
use mio::{
    net::{TcpListener, UnixListener, UnixStream},
    Interest, Registry, Token,
};
use slab::Slab;
use std::{
    collections::{HashMap, VecDeque},
    io::{self, Read, Write},
    os::fd::{AsRawFd, RawFd},
    sync::{atomic::AtomicU64, Arc},
    task::Waker,
};

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
pub(crate) const CONTROL: Token = Token(usize::MAX - 3);
pub(crate) const LOCAL_LISTENER: Token = Token(usize::MAX - 4);

/// Bytes a `Sender` may have queued before `send` waits.
pub(crate) const SEND_BOUND: usize = 1 << 20;
/// Bytes received and not yet taken by `recv` before reading from the peer pauses.
pub(crate) const RECV_BOUND: usize = 1 << 20;

pub(crate) const FRAME_OPEN: u8 = 1;
pub(crate) const FRAME_DATA: u8 = 2;
pub(crate) const FRAME_CLOSE: u8 = 3;
const FRAME_HELLO: u8 = 10;
const FRAME_ACCEPT: u8 = 11;
const FRAME_REJECT: u8 = 12;
const FRAME_REFUSE: u8 = 13;

const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    /// Accepted; the peer's HELLO has not arrived yet.
    AwaitHello,
    /// We connected and sent HELLO; waiting for the answer.
    AwaitReply(Pid),
    /// Carrying frames for this peer.
    Established(Pid),
}

#[derive(Debug)]
struct Socket {
    stream: Stream,
    phase: Phase,
    /// The start of a frame not yet complete.
    partial: Vec<u8>,
    /// Handshake bytes, written before any of the peer's frames.
    ctl_out: Vec<u8>,
}

/// Everything this process knows about one other process.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    sock: Option<usize>,
    connecting: Option<usize>,
    /// What goes to it, shared with our `Sender` to it.
    pub(crate) lane: Arc<Lane>,
    pub(crate) inbox: Inbox,
    pub(crate) read_paused: bool,
    /// Whether threads blocked in `recv` wait on the connection themselves.
    pub(crate) attention: Arc<Attention>,
    /// Our connection attempt was refused or the connection was reset or closed.
    closed: bool,
    /// The bridge says the process has ended.
    ended: bool,
    watched: bool,
    pub(crate) has_sender: bool,
    pub(crate) has_receiver: bool,
    /// The peer's current `Sender` sends a type other than our `Receiver`'s.
    pub(crate) mismatched: bool,
    /// The tasks waiting in `recv` on our `Receiver` from it: more than one
    /// when threads share the `Receiver`, and each must hear of the end.
    pub(crate) recv_wakers: Vec<Waker>,
    /// The lane's [`Lane::inline_writes`] at the I/O thread's last look.
    inline_writes_seen: u32,
}

impl Peer {
    /// Whether the process is known to be gone and nothing more will arrive.
    pub(crate) fn gone(&self) -> bool {
        self.closed || (self.ended && self.sock.is_none() && self.connecting.is_none())
    }

    /// Bytes queued by our `Sender` and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.lane.lock().out.queued()
    }
}

/// The answer to a request, once it comes.
#[derive(Debug, Default)]
pub(crate) struct CallSlot {
    pub(crate) reply: Option<Reply>,
    pub(crate) waker: Option<Waker>,
}

/// Values for one mailbox of this process, with the type each was sent as.
#[derive(Debug, Default)]
pub(crate) struct MailQueue {
    pub(crate) items: VecDeque<(Pid, String, Vec<u8>)>,
    pub(crate) waker: Option<Waker>,
    pub(crate) open: bool,
}

#[derive(Debug)]
struct Control {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    lost: bool,
    /// Threads blocked on an answer, mail or exit signal poll the connection
    /// themselves and read what comes, as for a peer's socket.
    attention: Arc<Attention>,
}

impl Control {
    /// Appends a request to what goes to the bridge.
    fn queue(&mut self, request: &Request) {
        if self.lost {
            return;
        }
        if let Err(error) = codec::append_frame(&mut self.wbuf, KIND_MESSAGE, request) {
            log::error!("encoding a request to the bridge: {error}");
        }
    }
}

/// The connection state of this process.
#[derive(Debug)]
pub(crate) struct Net {
    me: Pid,
    token: u64,
    registry: Registry,
    listener: TcpListener,
    /// The Unix socket that peers on this host connect to (see [`crate::transport`]).
    local_listener: Option<UnixListener>,
    sockets: Slab<Socket>,
    pub(crate) peers: PidMap<Peer>,
    dirty: Vec<Pid>,
    control: Control,
    pub(crate) calls: HashMap<u64, CallSlot>,
    next_call_id: u64,
    /// Exit signals of linked processes, for a process that traps exits.
    pub(crate) exits: VecDeque<Exit>,
    pub(crate) exits_waker: Option<Waker>,
    pub(crate) mail: HashMap<String, MailQueue>,
    /// A sender waiting for the bridge connection's buffer to drain.
    pub(crate) control_waker: Option<Waker>,
    /// Spawn requests whose process is to be killed as soon as it is started
    /// (their future, a job's, was dropped before the answer came).
    pub(crate) unwanted_spawns: std::collections::HashSet<u64>,
    /// Where reads land first (see `read_socket`).
    scratch: Vec<u8>,
    /// Wakers to call once the lock is released.
    pub(crate) to_wake: Vec<Waker>,
    /// See [`Net::socket_epoch`].
    socket_epoch: Arc<AtomicU64>,
}

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

impl Net {
    pub(crate) fn new(
        me: Pid,
        token: u64,
        registry: Registry,
        mut listener: TcpListener,
        local_listener: Option<UnixListener>,
        mut control: UnixStream,
    ) -> io::Result<Net> {
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        registry.register(&mut control, CONTROL, Interest::READABLE | Interest::WRITABLE)?;
        let attention = Arc::new(Attention::shared());
        attention.bind(Registration { epoll: registry.as_raw_fd(), fd: control.as_raw_fd(), token: CONTROL.0 });
        // Without it, peers on this host connect over TCP.
        let local_listener = local_listener.and_then(|mut local| {
            match registry.register(&mut local, LOCAL_LISTENER, Interest::READABLE) {
                Ok(()) => Some(local),
                Err(error) => {
                    log::debug!("listening on a Unix socket: {error}");
                    None
                }
            }
        });
        Ok(Net {
            me,
            token,
            registry,
            listener,
            local_listener,
            sockets: Slab::new(),
            peers: PidMap::default(),
            dirty: Vec::new(),
            control: Control { stream: control, rbuf: Vec::new(), wbuf: Vec::new(), lost: false, attention },
            calls: HashMap::new(),
            next_call_id: 0,
            exits: VecDeque::new(),
            exits_waker: None,
            mail: HashMap::new(),
            control_waker: None,
            unwanted_spawns: std::collections::HashSet::new(),
            scratch: Vec::new(),
            to_wake: Vec::new(),
            socket_epoch: Arc::default(),
        })
    }

    /// Handles one readiness event from the reactor.
    /// `closed` says the peer closed its end or the socket failed: then input is
    /// read to its end whoever waits on it.
    pub(crate) fn on_event(&mut self, token: Token, readable: bool, writable: bool, closed: bool) {
        match token {
            LISTENER => self.accept_all(false),
            LOCAL_LISTENER => self.accept_all(true),
            CONTROL => {
                if writable {
                    self.flush_control();
                }
                if readable {
                    self.read_control();
                }
            }
            Token(key) => {
                let Some(socket) = self.sockets.get(key) else {
                    return;
                };
                if let Phase::Established(pid) = socket.phase {
                    if let Some(peer) = self.peers.get(&pid) {
                        peer.attention.listen_after_event();
                    }
                }
                if writable {
                    self.on_writable(key);
                }
                if (readable || closed) && self.sockets.contains(key) && (closed || !self.left_to_its_reader(key)) {
                    self.read_socket(key, closed);
                }
            }
        }
    }

    /// Whether a thread blocked in `recv` waits on socket `key` itself (it reads
    /// what comes, so the I/O thread leaves it alone and only notes it).
    fn left_to_its_reader(&mut self, key: usize) -> bool {
        let Phase::Established(pid) = self.sockets[key].phase else { return false };
        let Some(peer) = self.peers.get(&pid) else { return false };
        let attended = peer.attention.attended();
        if attended {
            peer.attention.skip();
            peer.attention.disarm();
        }
        attended
    }

    /// For the I/O thread's fast path: the attention and lane of the peer on
    /// established socket `key`, valid while [`Net::socket_epoch`] stays the same.
    pub(crate) fn fast_path_of(&self, key: usize) -> Option<(Arc<Attention>, Arc<Lane>)> {
        let Phase::Established(pid) = self.sockets.get(key)?.phase else { return None };
        let peer = self.peers.get(&pid)?;
        Some((peer.attention.clone(), peer.lane.clone()))
    }

    /// Counts the sockets dropped, so the I/O thread knows when what it keeps
    /// from [`Net::fast_path_of`] may have gone stale (a key can be reused).
    pub(crate) fn socket_epoch(&self) -> Arc<AtomicU64> {
        self.socket_epoch.clone()
    }

    // ---- the peer table, as the channel API uses it ----

    /// The entry for `pid`, asking the bridge to say when it ends.
    pub(crate) fn peer(&mut self, pid: Pid) -> &mut Peer {
        let Net { peers, control, .. } = self;
        let peer = peers.entry(pid).or_default();
        if !peer.watched {
            peer.watched = true;
            // Written out by the next flush of the control connection (every
            // `with_net` and every reactor turn end with one).
            control.queue(&Request::Watch { pid });
        }
        peer
    }

    /// Starts a connection to `pid` unless one exists or is being made.
    pub(crate) fn connect(&mut self, pid: Pid) {
        let peer = self.peer(pid);
        if peer.sock.is_some() || peer.connecting.is_some() || peer.gone() {
            return;
        }
        let mut stream = match Stream::connect(pid.addr(), self.me.addr()) {
            Ok(stream) => stream,
            Err(error) => {
                log::debug!("connecting to {pid}: {error}");
                self.peer_closed(pid);
                return;
            }
        };
        let entry = self.sockets.vacant_entry();
        let key = entry.key();
        if let Err(error) = self.registry.register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            log::warn!("registering a connection to {pid}: {error}");
            self.peer_closed(pid);
            return;
        }
        let mut ctl_out = Vec::new();
        let hello = codec::append_frame(&mut ctl_out, FRAME_HELLO, &(self.me, pid, self.token));
        debug_assert!(hello.is_ok());
        entry.insert(Socket { stream, phase: Phase::AwaitReply(pid), partial: Vec::new(), ctl_out });
        self.peer(pid).connecting = Some(key);
    }

    /// Queues the frame announcing a new `Sender` of values named `type_name`.
    pub(crate) fn open_sender(&mut self, pid: Pid, type_name: &str) {
        let _ = self.peer(pid).lane.lock().out.append(|buf| {
            codec::append_raw_frame(buf, FRAME_OPEN, type_name.as_bytes());
            Ok::<(), ()>(())
        });
        self.mark_dirty(pid);
    }

    /// Queues the frame saying our `Sender` was dropped.
    pub(crate) fn close_sender(&mut self, pid: Pid) {
        let peer = self.peer(pid);
        peer.has_sender = false;
        if !peer.gone() {
            let _ = peer.lane.lock().out.append(|buf| {
                codec::append_raw_frame(buf, FRAME_CLOSE, &[]);
                Ok::<(), ()>(())
            });
            self.mark_dirty(pid);
        }
        self.forget_if_done(pid);
    }

    /// Drops what this process keeps about `pid` once `pid` is gone, nothing
    /// refers to it any more and no value of it waits to be received, so a
    /// long-lived process that talks to many short-lived ones does not grow. A later channel to `pid` starts afresh
    /// (and learns at once that it has ended).
    pub(crate) fn forget_if_done(&mut self, pid: Pid) {
        let done = self.peers.get(&pid).is_some_and(|peer| {
            peer.gone()
                && !peer.has_sender
                && !peer.has_receiver
                && !peer.inbox.holds_values(FRAME_DATA)
                && peer.sock.is_none()
                && peer.connecting.is_none()
        });
        if done {
            self.peers.remove(&pid);
        }
    }

    /// Queues a value for `pid` whatever its buffer holds (the slow path of a
    /// send: `Sender` appends to the peer's [`Lane`] itself while it has room).
    /// Values for a process that is gone are dropped.
    pub(crate) fn queue_value<T: serde::Serialize>(&mut self, pid: Pid, value: &T) -> Result<(), CodecError> {
        let peer = self.peer(pid);
        if !peer.gone() {
            peer.lane.lock().out.append(|buf| codec::append_frame(buf, FRAME_DATA, value))?;
            self.mark_dirty(pid);
        }
        Ok(())
    }

    /// Queues a large `Vec<u8>` value for `pid` without copying it (`header` is
    /// its frame's header) whatever its buffer holds; dropped if `pid` is gone.
    pub(crate) fn queue_owned(&mut self, pid: Pid, header: &[u8], bytes: Vec<u8>) {
        let peer = self.peer(pid);
        if !peer.gone() {
            peer.lane.lock().out.push_chunk(header, bytes);
            self.mark_dirty(pid);
        }
    }

    /// What follows a value a `Sender` appended to `pid`'s lane itself: a reply
    /// is written at once, on this thread (in request/response, latency
    /// counts); values streamed one after another are left for the reactor to
    /// write together, the peer put on its list if it was not.
    pub(crate) fn appended(&mut self, pid: Pid, newly_dirty: bool, reply: bool) {
        if reply && self.peers.get(&pid).is_some_and(|peer| peer.sock.is_some()) {
            self.flush_peer(pid);
            if newly_dirty {
                if let Some(peer) = self.peers.get(&pid) {
                    let mut lane = peer.lane.lock();
                    if lane.out.queued() == 0 {
                        // Nothing left to write: it need not go on the list.
                        lane.dirty = false;
                        return;
                    }
                }
            }
        }
        if newly_dirty {
            self.dirty.push(pid);
        }
    }

    /// Whether `pid`'s buffer has room (or it is gone); if not, keeps `waker` to
    /// be woken when it has, after writing what the socket takes now.
    pub(crate) fn room_or_wait(&mut self, pid: Pid, waker: &Waker) -> bool {
        let peer = self.peer(pid);
        if peer.gone() || peer.queued() < SEND_BOUND {
            return true;
        }
        peer.lane.lock().send_waker = Some(waker.clone());
        self.flush_peer(pid);
        let peer = self.peer(pid);
        if peer.gone() || peer.queued() < SEND_BOUND {
            peer.lane.lock().send_waker = None;
            return true;
        }
        false
    }

    fn mark_dirty(&mut self, pid: Pid) {
        let peer = self.peer(pid);
        if !std::mem::replace(&mut peer.lane.lock().dirty, true) {
            self.dirty.push(pid);
        }
    }

    /// Whether queued frames wait to be written (the reactor should be woken).
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Writes what every peer has queued, as far as the sockets take it.
    pub(crate) fn flush_dirty(&mut self) {
        self.flush_lanes(false);
    }

    /// The I/O thread's [`flush_dirty`](Net::flush_dirty): leaves on the list,
    /// untouched, each peer whose sender wrote to its socket itself since the
    /// last look (it streams, and writes what it queues within the next
    /// moment or stops; the next look, one coalescing pause later, writes what
    /// is left then). Returns whether any was left.
    pub(crate) fn flush_idle_dirty(&mut self) -> bool {
        self.flush_lanes(true)
    }

    /// Writes the dirty lanes, leaving those of streaming senders if
    /// `leave_streaming`; returns whether any was left.
    fn flush_lanes(&mut self, leave_streaming: bool) -> bool {
        let mut streaming = Vec::new();
        for pid in std::mem::take(&mut self.dirty) {
            if let Some(peer) = self.peers.get_mut(&pid) {
                let writes = peer.lane.inline_writes();
                if leave_streaming && writes != peer.inline_writes_seen && !peer.gone() {
                    peer.inline_writes_seen = writes;
                    streaming.push(pid);
                    continue;
                }
                peer.lane.lock().dirty = false;
            }
            self.flush_peer(pid);
        }
        let left = !streaming.is_empty();
        self.dirty.extend(streaming);
        left
    }

    /// Writes `pid`'s queued frames to its established connection.
    pub(crate) fn flush_peer(&mut self, pid: Pid) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.gone() {
            peer.lane.lock().out.clear();
            return;
        }
        let Some(key) = peer.sock else { return };
        let socket = &mut self.sockets[key];
        let mut lane = peer.lane.lock();
        let before = lane.out.queued();
        let mut failed = None;
        while !socket.ctl_out.is_empty() {
            match socket.stream.write(&socket.ctl_out) {
                Ok(n) => drop(socket.ctl_out.drain(..n)),
                Err(e) if would_block(&e) => {
                    peer.attention.want_output(true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            // Only frames are left to write: the sender may write them too.
            lane.socket = Some(socket.stream.as_raw_fd());
            lane.write_again_at = 0;
            if let Err(error) = lane.out.write_to(&mut socket.stream) {
                failed = Some(error);
            }
            // What is left waits for room (a sender that writes itself leaves
            // what it could not write to the I/O thread, which comes here).
            peer.attention.want_output(lane.out.queued() > 0);
        }
        if lane.out.queued() < before {
            self.to_wake.extend(lane.send_waker.take());
        }
        drop(lane);
        if let Some(error) = failed {
            log::debug!("writing to {pid}: {error}");
            self.peer_closed(pid);
        }
    }

    /// Reads whatever `pid`'s connection holds, for a `recv` that found nothing.
    pub(crate) fn read_peer(&mut self, pid: Pid) {
        if let Some(key) = self.peers.get(&pid).and_then(|p| p.sock) {
            self.read_socket(key, false);
        }
    }

    /// The fd of `pid`'s established connection.
    pub(crate) fn peer_fd(&self, pid: Pid) -> Option<RawFd> {
        let key = self.peers.get(&pid)?.sock?;
        Some(self.sockets[key].stream.as_raw_fd())
    }

    /// Reads and drops what peers sent that nobody will receive now: a socket
    /// closed with unread input is reset, and a reset can make the peer lose what
    /// it had not read yet of ours.
    pub(crate) fn discard_input(&mut self) {
        let mut sink = [0u8; 16 * 1024];
        for (_, socket) in self.sockets.iter_mut() {
            while matches!(socket.stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }

    /// Whether anything is still on its way out: queued frames, handshakes under
    /// way with frames waiting, bytes the kernel has not sent, requests, and
    /// processes to kill once their spawn is answered.
    pub(crate) fn unsent(&self) -> usize {
        let peers: usize = self
            .peers
            .values()
            .filter(|p| !p.gone())
            .map(|p| {
                let kernel = p
                    .sock
                    .map(|key| &self.sockets[key].stream)
                    .filter(|stream| stream.may_hold_unsent())
                    .and_then(|stream| sys::unsent_bytes(stream.as_raw_fd()).ok())
                    .unwrap_or(0);
                p.queued() + kernel
            })
            .sum();
        let control = if self.control.lost { 0 } else { self.control.wbuf.len() + self.unwanted_spawns.len() };
        peers + control
    }

    // ---- sockets ----

    /// Serves the connections waiting in the backlog of the TCP listener, or of
    /// the `local` one.
    fn accept_all(&mut self, local: bool) {
        loop {
            let accepted = match (local, &self.local_listener) {
                (false, _) => self.listener.accept().map(|(stream, _)| Stream::accepted(stream)),
                (true, Some(listener)) => listener.accept().map(|(stream, _)| Stream::local(stream)),
                (true, None) => return,
            };
            match accepted {
                Ok(stream) => self.add_accepted(stream),
                Err(e) if would_block(&e) => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(error) => {
                    // Out of fds or memory: leave the rest in the backlog for the next event.
                    log::warn!("accepting a connection: {error}");
                    return;
                }
            }
        }
    }

    /// Serves a connection a listener accepted: its HELLO may be there already.
    fn add_accepted(&mut self, mut stream: Stream) {
        let entry = self.sockets.vacant_entry();
        let key = entry.key();
        match self.registry.register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            Ok(()) => {
                entry.insert(Socket { stream, phase: Phase::AwaitHello, partial: Vec::new(), ctl_out: Vec::new() });
                self.read_socket(key, true);
            }
            Err(error) => log::warn!("registering an accepted connection: {error}"),
        }
    }

    fn on_writable(&mut self, key: usize) {
        match self.sockets[key].phase {
            Phase::AwaitReply(pid) => {
                let socket = &mut self.sockets[key];
                if let Ok(Some(error)) | Err(error) = socket.stream.take_error() {
                    log::debug!("connecting to {pid}: {error}");
                    self.drop_socket(key);
                    self.on_connection_lost(pid, key);
                    return;
                }
                while !socket.ctl_out.is_empty() {
                    match socket.stream.write(&socket.ctl_out) {
                        Ok(n) => drop(socket.ctl_out.drain(..n)),
                        Err(e) if would_block(&e) || e.kind() == io::ErrorKind::NotConnected => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => {
                            log::debug!("connecting to {pid}: {error}");
                            self.drop_socket(key);
                            self.on_connection_lost(pid, key);
                            return;
                        }
                    }
                }
            }
            Phase::Established(pid) => self.flush_peer(pid),
            Phase::AwaitHello => {}
        }
    }

    /// Reads from socket `key` until it would block, its peer's inbox is full, or
    /// it ends.
    ///
    /// An established connection reads straight into its peer's [`Inbox`], where
    /// `recv` parses frames in place. A connection still in its handshake reads
    /// into the shared scratch buffer, keeping only an incomplete frame.
    ///
    /// A read that does not fill its buffer ends it unless `to_the_end`: the
    /// socket is empty, and what comes next raises a new event (a close too, which
    /// the I/O thread reads to the end).
    fn read_socket(&mut self, key: usize, to_the_end: bool) {
        loop {
            let socket = &mut self.sockets[key];
            let fd = socket.stream.as_raw_fd();
            let result = match socket.phase {
                Phase::Established(pid) => {
                    let peer = self.peers.get_mut(&pid).expect("established sockets have peers");
                    // Reading pauses once enough waits to be received, but never
                    // in the middle of the first frame, however large: it could
                    // not complete, and nothing else would be received.
                    if peer.inbox.pending() >= RECV_BOUND && peer.inbox.has_frame() {
                        peer.read_paused = true;
                        return;
                    }
                    peer.read_paused = false;
                    peer.attention.take_skipped();
                    let result = peer.inbox.read_from(fd);
                    if matches!(result, Ok((n, _)) if n > 0) && peer.inbox.has_frame() {
                        self.to_wake.append(&mut peer.recv_wakers);
                    }
                    match result {
                        // A short read emptied the socket: the next bytes to come
                        // raise a new event, and a read now would only say so.
                        Ok((n, false)) if n > 0 && !to_the_end => return,
                        Ok((n, _)) => Ok(n),
                        Err(error) => Err(error),
                    }
                }
                Phase::AwaitHello | Phase::AwaitReply(_) => self.read_handshake(key),
            };
            match result {
                Ok(0) => return self.on_eof(key),
                Ok(_) if self.sockets.contains(key) => {}
                Ok(_) => return,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    log::debug!("reading a connection: {error}");
                    return self.on_eof(key);
                }
            }
        }
    }

    /// Reads a connection in its handshake and handles its frames; once it is
    /// established, what follows goes to the peer's inbox.
    fn read_handshake(&mut self, key: usize) -> io::Result<usize> {
        let socket = &mut self.sockets[key];
        let own = !socket.partial.is_empty();
        let mut buf = if own { std::mem::take(&mut socket.partial) } else { std::mem::take(&mut self.scratch) };
        let want = codec::frame_len(&buf).map_or(READ_CHUNK, |n| n.saturating_sub(buf.len())).max(READ_CHUNK);
        let result = sys::read_spare(socket.stream.as_raw_fd(), &mut buf, want);
        let mut pos = 0;
        while let Some(socket) = self.sockets.get(key) {
            if let Phase::Established(pid) = socket.phase {
                let peer = self.peers.get_mut(&pid).expect("established sockets have peers");
                peer.inbox.extend(&buf[pos..]);
                if peer.inbox.has_frame() {
                    self.to_wake.append(&mut peer.recv_wakers);
                }
                pos = buf.len();
                break;
            }
            let frame = match codec::next_frame(&buf[pos..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    log::warn!("closing a connection that sent a corrupt handshake: {error}");
                    let phase = socket.phase;
                    self.drop_socket(key);
                    if let Phase::AwaitReply(pid) = phase {
                        self.on_connection_lost(pid, key);
                    }
                    break;
                }
            };
            let payload = &buf[pos + frame.payload.start..pos + frame.payload.end];
            pos += frame.len;
            self.handle_handshake(key, frame.kind, payload);
        }
        if let Some(socket) = self.sockets.get_mut(key) {
            socket.partial = buf[pos..].to_vec();
        }
        if !own {
            buf.clear();
            self.scratch = buf;
        }
        result
    }

    fn handle_handshake(&mut self, key: usize, kind: u8, payload: &[u8]) {
        let phase = self.sockets[key].phase;
        match (phase, kind) {
            (Phase::AwaitHello, FRAME_HELLO) => {
                let hello = codec::decode::<(Pid, Pid, u64)>(payload);
                self.on_hello(key, hello);
            }
            (Phase::AwaitReply(pid), FRAME_ACCEPT) => {
                self.establish(key, pid);
                self.peer(pid).connecting = None;
                self.flush_peer(pid);
            }
            (Phase::AwaitReply(pid), FRAME_REJECT) => {
                // The connection the peer opened to us wins; it is on its way.
                self.drop_socket(key);
                let peer = self.peer(pid);
                peer.connecting = None;
                if peer.ended && peer.sock.is_none() {
                    self.wake_peer(pid);
                }
                self.flush_peer(pid);
            }
            (Phase::AwaitReply(pid), FRAME_REFUSE) => {
                let reason = String::from_utf8_lossy(payload).into_owned();
                log::warn!("process {pid} refused our connection: {reason}");
                self.drop_socket(key);
                self.peer_closed(pid);
            }
            (phase, kind) => {
                log::warn!("closing a connection that sent frame kind {kind} in its handshake ({phase:?})");
                self.drop_socket(key);
                if let Phase::AwaitReply(pid) = phase {
                    self.on_connection_lost(pid, key);
                }
            }
        }
    }

    /// A corrupt frame from `pid`: nothing more from it can be trusted.
    pub(crate) fn corrupt(&mut self, pid: Pid, error: &CodecError) {
        log::warn!("closing the connection to {pid}, which sent a corrupt frame: {error}");
        self.peer_closed(pid);
    }

    fn on_hello(&mut self, key: usize, hello: Result<(Pid, Pid, u64), CodecError>) {
        let (from, to, token) = match hello {
            Ok(hello) => hello,
            Err(error) => return self.refuse(key, &format!("malformed handshake: {error}")),
        };
        if token != self.token {
            return self.refuse(key, "the connection presented another job's token");
        }
        if to != self.me {
            return self.refuse(key, &format!("this is process {}, not {to}", self.me));
        }
        let me = self.me;
        let peer = self.peer(from);
        let theirs_wins = peer.sock.is_none() && (peer.connecting.is_none() || from < me);
        let reply = if theirs_wins { FRAME_ACCEPT } else { FRAME_REJECT };
        codec::append_raw_frame(&mut self.sockets[key].ctl_out, reply, &[]);
        if !theirs_wins {
            // Send the answer, then close; our own connection carries the frames.
            let socket = &mut self.sockets[key];
            let _ = socket.stream.write(&socket.ctl_out);
            self.drop_socket(key);
            return;
        }
        self.establish(key, from);
        let ours = self.peer(from).connecting.take();
        if let Some(ours) = ours {
            self.drop_socket(ours);
        }
        self.flush_peer(from);
    }

    fn refuse(&mut self, key: usize, reason: &str) {
        log::warn!("refusing a connection: {reason}");
        let socket = &mut self.sockets[key];
        codec::append_raw_frame(&mut socket.ctl_out, FRAME_REFUSE, reason.as_bytes());
        let _ = socket.stream.write(&socket.ctl_out);
        self.drop_socket(key);
    }

    fn on_eof(&mut self, key: usize) {
        let Some(socket) = self.sockets.get(key) else {
            return;
        };
        let phase = socket.phase;
        self.drop_socket(key);
        if let Phase::Established(pid) | Phase::AwaitReply(pid) = phase {
            self.on_connection_lost(pid, key);
        }
    }

    /// Socket `key` of `pid` is gone: if it was the peer's connection (or our only
    /// attempt at one), the process has ended.
    fn on_connection_lost(&mut self, pid: Pid, key: usize) {
        let peer = self.peer(pid);
        if peer.sock == Some(key) {
            peer.sock = None;
            self.peer_closed(pid);
        } else if peer.connecting == Some(key) {
            peer.connecting = None;
            if peer.sock.is_none() {
                self.peer_closed(pid);
            }
        }
    }

    /// Socket `key` now carries the frames of `pid`, both ways.
    fn establish(&mut self, key: usize, pid: Pid) {
        let socket = &mut self.sockets[key];
        socket.phase = Phase::Established(pid);
        let registration = Registration { epoll: self.registry.as_raw_fd(), fd: socket.stream.as_raw_fd(), token: key };
        let peer = self.peer(pid);
        peer.sock = Some(key);
        peer.attention.bind(registration);
    }

    fn drop_socket(&mut self, key: usize) {
        if self.sockets.contains(key) {
            let mut socket = self.sockets.remove(key);
            if let Phase::Established(pid) = socket.phase {
                if let Some(peer) = self.peers.get(&pid) {
                    peer.attention.unbind(socket.stream.as_raw_fd());
                    let mut lane = peer.lane.lock();
                    if lane.socket == Some(socket.stream.as_raw_fd()) {
                        lane.socket = None;
                    }
                }
            }
            let _ = self.registry.deregister(&mut socket.stream);
            self.socket_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// `pid` is gone: drop what we queued for it and wake its waiters.
    fn peer_closed(&mut self, pid: Pid) {
        let peer = self.peer(pid);
        peer.closed = true;
        let mut lane = peer.lane.lock();
        lane.closed = true;
        lane.out.clear();
        drop(lane);
        if let Some(key) = peer.sock.take() {
            self.drop_socket(key);
        }
        self.wake_peer(pid);
        self.forget_if_done(pid);
    }

    fn wake_peer(&mut self, pid: Pid) {
        if let Some(peer) = self.peers.get_mut(&pid) {
            self.to_wake.append(&mut peer.recv_wakers);
            self.to_wake.extend(peer.lane.lock().send_waker.take());
        }
    }

    // ---- the control connection to the bridge ----

    /// Sends a request to the bridge.
    pub(crate) fn request(&mut self, request: &Request) {
        self.control.queue(request);
        self.flush_control();
    }

    /// Writes what waits for the bridge, as far as the socket takes it.
    pub(crate) fn flush_requests(&mut self) {
        if !self.control.wbuf.is_empty() {
            self.flush_control();
        }
    }

    /// A new id with a slot for an answer, for a request sent as part of another.
    pub(crate) fn new_slot(&mut self) -> u64 {
        self.next_call_id += 1;
        self.calls.insert(self.next_call_id, CallSlot::default());
        self.next_call_id
    }

    /// Sends the request `make(id)` with a new id, keeping a slot for its answer.
    pub(crate) fn call(&mut self, make: impl FnOnce(u64) -> Request) -> u64 {
        self.next_call_id += 1;
        let id = self.next_call_id;
        self.calls.insert(id, CallSlot::default());
        self.request(&make(id));
        id
    }

    /// The answer to request `id` once it comes; `None` if the bridge is gone.
    pub(crate) fn poll_call(&mut self, id: u64, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Reply>> {
        self.poll_control(cx.waker(), |net| {
            let lost = net.control.lost;
            let slot = net.calls.get_mut(&id)?;
            if let Some(reply) = slot.reply.take() {
                net.calls.remove(&id);
                return Some(Some(reply));
            }
            if lost {
                net.calls.remove(&id);
                return Some(None);
            }
            slot.waker = Some(cx.waker().clone());
            None
        })
    }

    /// Polls for something the bridge sends: `take` returns it once it is here
    /// (keeping the task's waker when it is not). Before the task waits, what
    /// the connection holds is read on this thread if this thread saw it
    /// readable or the I/O thread left it; a task that waits has its thread
    /// poll the connection itself (see [`Attention`]).
    pub(crate) fn poll_control<R>(
        &mut self,
        waker: &Waker,
        mut take: impl FnMut(&mut Net) -> Option<R>,
    ) -> std::task::Poll<R> {
        if let Some(ready) = take(self) {
            return std::task::Poll::Ready(ready);
        }
        if self.control.lost {
            return std::task::Poll::Pending;
        }
        let fd = self.control.stream.as_raw_fd();
        let left = self.control.attention.take_skipped();
        if left || block::saw_readable(fd) {
            self.read_control();
            if let Some(ready) = take(self) {
                return std::task::Poll::Ready(ready);
            }
        }
        if !self.control.lost {
            block::waiting_on(fd, &self.control.attention, waker);
        }
        std::task::Poll::Pending
    }

    /// For the I/O thread's fast path: the attention of the connection to the bridge.
    pub(crate) fn control_attention(&self) -> Arc<Attention> {
        self.control.attention.clone()
    }

    /// Whether the bridge is gone (no answer will come).
    pub(crate) fn bridge_is_lost(&self) -> bool {
        self.control.lost
    }

    /// Bytes waiting to go to the bridge.
    pub(crate) fn control_queued(&self) -> usize {
        self.control.wbuf.len()
    }

    fn flush_control(&mut self) {
        while !self.control.wbuf.is_empty() && !self.control.lost {
            match self.control.stream.write(&self.control.wbuf) {
                Ok(n) => {
                    self.control.wbuf.drain(..n);
                    self.to_wake.extend(self.control_waker.take());
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.bridge_lost(),
            }
        }
        // The I/O thread hears of room to write only while something waits for
        // it: a Unix socket reports room each time the bridge reads.
        self.control.attention.want_output(!self.control.wbuf.is_empty() && !self.control.lost);
    }

    fn read_control(&mut self) {
        loop {
            // Straight into the buffer's spare room: a zeroed buffer on the stack
            // would cost every process pages of stack for good.
            match sys::read_spare(self.control.stream.as_raw_fd(), &mut self.control.rbuf, 4096) {
                Ok(0) => return self.bridge_lost(),
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.bridge_lost(),
            }
        }
        let mut pos = 0;
        while let Ok(Some(frame)) = codec::next_frame(&self.control.rbuf[pos..]) {
            let reply = codec::decode::<Reply>(&self.control.rbuf[pos..][frame.payload]);
            pos += frame.len;
            match reply {
                Ok(reply) if reply.call_id().is_some() => {
                    let id = reply.call_id().expect("checked");
                    if let Some(slot) = self.calls.get_mut(&id) {
                        slot.reply = Some(reply);
                        self.to_wake.extend(slot.waker.take());
                    } else if let Reply::Spawned { result: Ok(pid), .. } = reply {
                        if self.unwanted_spawns.remove(&id) {
                            self.request(&Request::Kill { pid });
                        }
                    }
                }
                Ok(Reply::Ended { pid }) => self.on_ended(pid),
                Ok(Reply::Exit { pid, status }) => {
                    self.exits.push_back(Exit { pid, status });
                    self.to_wake.extend(self.exits_waker.take());
                }
                Ok(Reply::Mail { from, mailbox, type_name, value }) => {
                    let queue = self.mail.entry(mailbox).or_default();
                    queue.items.push_back((from, type_name, value));
                    self.to_wake.extend(queue.waker.take());
                }
                Ok(other) => log::error!("an unexpected message from the bridge: {other:?}"),
                Err(error) => log::error!("a corrupt message from the bridge: {error}"),
            }
        }
        self.control.rbuf.drain(..pos);
    }

    /// The bridge says `pid` has ended. Connections it opened before it ended are
    /// in the listen backlog or being read: take them in first, so what it sent
    /// is received before its end is.
    fn on_ended(&mut self, pid: Pid) {
        self.accept_all(false);
        self.accept_all(true);
        let waiting: Vec<usize> =
            self.sockets.iter().filter(|(_, s)| s.phase == Phase::AwaitHello).map(|(key, _)| key).collect();
        for key in waiting {
            self.read_socket(key, true);
        }
        // A peer already forgotten stays forgotten (looking it up would watch it
        // again, and the bridge would answer again, forever).
        let Some(peer) = self.peers.get_mut(&pid) else { return };
        peer.ended = true;
        if peer.gone() {
            self.wake_peer(pid);
        }
        self.forget_if_done(pid);
    }

    fn bridge_lost(&mut self) {
        if self.control.lost {
            return;
        }
        self.control.lost = true;
        let _ = self.registry.deregister(&mut self.control.stream);
        for slot in self.calls.values_mut() {
            self.to_wake.extend(slot.waker.take());
        }
        self.to_wake.extend(self.control_waker.take());
    }
}
