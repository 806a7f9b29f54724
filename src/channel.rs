//! Typed simplex channels between two processes: [`Sender`] and [`Receiver`].
//!
//! # Behaviour
//! - At most one `Sender` and one `Receiver` per remote process exist in a process
//!   at a time (of any `T`); both directions share one duplex TCP connection.
//! - `send` resolves once the value is queued within the channel's bounded buffer
//!   (one value larger than the bound is accepted when the buffer is empty), so a
//!   slow receiver makes `send` wait instead of growing the sender's memory.
//! - Values from one `Sender` arrive in order and exactly once while both
//!   processes live. Values that arrive before the `Receiver` exists are kept.
//! - Dropping a `Sender` delivers what it queued, then the `Receiver` sees
//!   [`RecvError::SenderDropped`]. When the peer process ends, `recv` returns
//!   [`RecvError::PeerEnded`] once everything it sent has been received, whether
//!   or not it ever connected.
//! - Sending never fails, as in Erlang: a value sent to a process that has ended
//!   is dropped. Use `try_send` to have it handed back when the peer is known gone.
//! - The two ends must agree on `T`; a mismatch is [`RecvError::TypeMismatch`].

use crate::{
    biased::BiasedLock,
    block, codec,
    inbox::{Inbox, Large, Next},
    lane::{Appended, Lane},
    net::{Net, FRAME_CLOSE, FRAME_DATA, FRAME_OPEN, RECV_BOUND, SEND_BOUND},
    proto::{MailTo, Request},
    runtime, Pid,
};
use serde::{de::DeserializeOwned, Serialize};
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

/// Why `recv` returned no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The peer dropped its `Sender` to us, and every value it sent was received.
    SenderDropped,
    /// The peer process has ended (or never existed), and every value it sent was
    /// received.
    PeerEnded,
    /// The peer's `Sender` sends another type than this `Receiver` expects.
    TypeMismatch {
        /// The type this `Receiver` receives.
        expected: String,
        /// The type the peer's `Sender` sends.
        found: String,
    },
    /// A value could not be decoded as `T`.
    Corrupt(String),
    /// The job's bridge is gone, so nothing more can arrive (mailboxes).
    BridgeLost,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::SenderDropped => f.write_str("the sending process dropped its Sender"),
            RecvError::PeerEnded => f.write_str("the sending process has ended"),
            RecvError::TypeMismatch { expected, found } => {
                write!(f, "type mismatch: this Receiver expects {expected}, but the peer's Sender sends {found}")
            }
            RecvError::Corrupt(reason) => write!(f, "a value could not be decoded: {reason}"),
            RecvError::BridgeLost => f.write_str("the job's bridge is gone"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why `try_send` handed the value back.
pub enum SendError<T> {
    /// The channel's buffer is full; `send` would wait.
    Full(T),
    /// The peer process is known to have ended; the value could never arrive.
    Disconnected(T),
}

impl<T> SendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Full(value) | SendError::Disconnected(value) => value,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("Full(..)"),
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("the channel's buffer is full"),
            SendError::Disconnected(_) => f.write_str("the receiving process has ended"),
        }
    }
}

impl<T> std::error::Error for SendError<T> {}

/// The sending end of a channel to process `pid`.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let child = spawn(Resources::default(), FnOnce!(|parent: Pid| {
///     let total: u64 = (0..10).map(|_| Receiver::<u64>::new(parent).recv().block().unwrap()).sum();
///     println!("{total}");
/// }))
/// .block()
/// .unwrap();
/// let sender = Sender::<u64>::new(child);
/// for i in 0..10 {
///     sender.send(i).block();
/// }
/// # }
/// ```
pub struct Sender<T: Serialize> {
    route: Route,
    _type: PhantomData<fn(T)>,
}

/// Where a `Sender`'s values go.
#[derive(Debug, Clone)]
enum Route {
    /// The channel to a process's `Receiver`, and its outgoing side.
    Channel(Pid, Arc<Lane>),
    /// A mailbox, through the bridge.
    Mail { to: MailTo, mailbox: String },
}

impl<T: Serialize> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("route", &self.route).finish()
    }
}

impl<T: Serialize> Sender<T> {
    /// Opens the channel to process `pid`.
    ///
    /// # Panics
    /// If this process already has a `Sender` to `pid`, if `pid` is this process,
    /// or if [`init`](crate::init) has not been called.
    pub fn new(pid: Pid) -> Sender<T> {
        let me = runtime::get().me;
        assert!(pid != me, "constellation: cannot open a Sender from process {me} to itself");
        let lane = runtime::with_net(|net| {
            let peer = net.peer(pid);
            assert!(
                !peer.has_sender,
                "constellation: this process already has a Sender to {pid}; drop it before opening another"
            );
            peer.has_sender = true;
            let lane = peer.lane.clone();
            net.connect(pid);
            net.open_sender(pid, std::any::type_name::<T>());
            lane
        });
        Sender { route: Route::Channel(pid, lane), _type: PhantomData }
    }

    /// A sender to the mailbox `mailbox` of process `pid` (see [`Mailbox`](crate::Mailbox)).
    /// Any number of these may exist at once.
    ///
    /// # Panics
    /// If [`init`](crate::init) has not been called.
    pub fn to_mailbox(pid: Pid, mailbox: &str) -> Sender<T> {
        runtime::get();
        Sender { route: Route::Mail { to: MailTo::Pid(pid), mailbox: mailbox.to_owned() }, _type: PhantomData }
    }

    /// A sender to the mailbox `mailbox` of whichever process is registered as
    /// `name` when each value is sent (see [`register`](crate::register)). Values
    /// sent while no process holds the name are dropped.
    ///
    /// # Panics
    /// If [`init`](crate::init) has not been called.
    pub fn to_registered(name: &str, mailbox: &str) -> Sender<T> {
        runtime::get();
        Sender {
            route: Route::Mail { to: MailTo::Name(name.to_owned()), mailbox: mailbox.to_owned() },
            _type: PhantomData,
        }
    }

    /// The process this sends to, unless it sends to a registered name.
    pub fn remote_pid(&self) -> Option<Pid> {
        match &self.route {
            Route::Channel(pid, _) | Route::Mail { to: MailTo::Pid(pid), .. } => Some(*pid),
            Route::Mail { to: MailTo::Name(_), .. } => None,
        }
    }

    /// Queues `value` for the peer; resolves once it fits in the channel's buffer.
    ///
    /// A value sent to a process that has ended is dropped.
    ///
    /// # Panics
    /// If `value` cannot be serialised (its `Serialize` impl fails, or it is larger
    /// than 1 GiB).
    pub fn send(&self, value: T) -> Send<'_, T> {
        Send { sender: self, value: Some(value) }
    }

    /// Queues `value` now, or hands it back: [`SendError::Full`] if the buffer is
    /// full, [`SendError::Disconnected`] if the peer is known to have ended.
    pub fn try_send(&self, value: T) -> Result<(), SendError<T>> {
        let refused = runtime::with_net(|net| match &self.route {
            Route::Channel(pid, _) => {
                let peer = net.peer(*pid);
                (peer.gone(), peer.queued() >= SEND_BOUND)
            }
            Route::Mail { .. } => (net.bridge_is_lost(), net.control_queued() >= SEND_BOUND),
        });
        match refused {
            (true, _) => Err(SendError::Disconnected(value)),
            (false, true) => Err(SendError::Full(value)),
            (false, false) => {
                let _ = self.queue_or_wait(&value, None);
                Ok(())
            }
        }
    }

    /// Queues `value`, or with a `waiter` waits while the buffer is full.
    ///
    /// # Panics
    /// If the value cannot be serialised.
    fn queue_or_wait(&self, value: &T, waiter: Option<&Waker>) -> Poll<()> {
        let result = match &self.route {
            Route::Channel(pid, lane) => Self::to_lane(*pid, lane, value, waiter),
            Route::Mail { to, mailbox } => runtime::with_net(|net| {
                if let Some(waker) = waiter {
                    if !net.bridge_is_lost() && net.control_queued() >= SEND_BOUND {
                        net.control_waker = Some(waker.clone());
                        return Poll::Pending;
                    }
                }
                Poll::Ready(codec::encode(value).map(|value| {
                    let type_name = std::any::type_name::<T>().to_owned();
                    net.request(&Request::Mail { to: to.clone(), mailbox: mailbox.clone(), type_name, value });
                }))
            }),
        };
        match result {
            Poll::Ready(Err(error)) => {
                panic!("constellation: cannot serialise a value to send ({:?}): {error}", self.route)
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Appends a value to the channel's lane: while the buffer has room, with the
    /// lane's lock only.
    fn to_lane(pid: Pid, lane: &Lane, value: &T, waiter: Option<&Waker>) -> Poll<Result<(), codec::CodecError>> {
        match Self::append_to_lane(pid, lane, value) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => runtime::with_net(|net| {
                if let Some(waker) = waiter {
                    if !net.room_or_wait(pid, waker) {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(net.queue_value(pid, value))
            }),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    /// Appends a value to the channel's lane unless its buffer is full (then
    /// returns `false`). Always inlined: it is the fast path of
    /// [`Send::block`], and a call would cost a stack frame and a result in
    /// memory per value.
    #[inline(always)]
    fn append_to_lane(pid: Pid, lane: &Lane, value: &T) -> Result<bool, codec::CodecError> {
        match lane.try_append(|buf| codec::append_frame(buf, FRAME_DATA, value))? {
            Appended::Queued { newly_dirty: false, reply: false } => Ok(true),
            Appended::Queued { newly_dirty, reply } => {
                tell_net_appended(pid, newly_dirty, reply);
                Ok(true)
            }
            Appended::Full => Ok(false),
        }
    }

    /// Queues a large `Vec<u8>` (in `value`, taken once queued) without copying
    /// it, or waits while the buffer is full.
    fn push_owned(pid: Pid, lane: &Lane, header: &[u8], value: &mut Option<T>, waker: &Waker) -> Poll<()> {
        let mut take = || codec::take_byte_vec(value.take().expect("a value to send"));
        match lane.try_push_owned(header, &mut take) {
            Appended::Queued { newly_dirty: false, reply: false } => Poll::Ready(()),
            Appended::Queued { newly_dirty, reply } => {
                runtime::with_net(|net| net.appended(pid, newly_dirty, reply));
                Poll::Ready(())
            }
            Appended::Full => runtime::with_net(|net| {
                if !net.room_or_wait(pid, waker) {
                    return Poll::Pending;
                }
                net.queue_owned(pid, header, take());
                Poll::Ready(())
            }),
        }
    }

    /// Ready when the buffer has room (or the peer is gone).
    fn poll_room(&self, cx: &mut Context<'_>, net: &mut Net) -> Poll<()> {
        let ready = match &self.route {
            Route::Channel(pid, _) => net.room_or_wait(*pid, cx.waker()),
            Route::Mail { .. } => {
                let ready = net.bridge_is_lost() || net.control_queued() < SEND_BOUND;
                if !ready {
                    net.control_waker = Some(cx.waker().clone());
                }
                ready
            }
        };
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<T: Serialize> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Route::Channel(pid, _) = self.route {
            runtime::with_net(|net| net.close_sender(pid));
        }
    }
}

/// The future of [`Sender::send`].
#[must_use = "futures do nothing unless polled: call .block() or .await"]
pub struct Send<'a, T: Serialize> {
    sender: &'a Sender<T>,
    value: Option<T>,
}

impl<T: Serialize> fmt::Debug for Send<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Send").field("route", &self.sender.route).finish()
    }
}

impl<T: Serialize> Unpin for Send<'_, T> {}

impl<T: Serialize> Send<'_, T> {
    /// Sends on this thread, sleeping while the channel's buffer is full: what
    /// [`Block::block`](crate::Block::block) does, without its set-up when the
    /// buffer has room (the common case of a stream of small values).
    ///
    /// # Panics
    /// If the value cannot be serialised.
    #[inline(always)]
    pub fn block(mut self) {
        if let (Route::Channel(pid, lane), Some(value)) = (&self.sender.route, &self.value) {
            if codec::large_byte_vec(value).is_none() && matches!(Sender::append_to_lane(*pid, lane, value), Ok(true)) {
                self.value = None;
                return;
            }
        }
        self.block_slow()
    }

    /// [`Send::block`] when the value did not go straight into the lane.
    #[inline(never)]
    fn block_slow(self) {
        crate::Block::block(self)
    }
}

/// Tells `Net` that a value was queued on `pid`'s lane: rare in a stream (the
/// lane becomes dirty once per write), so kept out of the inlined fast path.
#[cold]
#[inline(never)]
fn tell_net_appended(pid: Pid, newly_dirty: bool, reply: bool) {
    runtime::with_net(|net| net.appended(pid, newly_dirty, reply));
}

impl<T: Serialize> Future for Send<'_, T> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(value) = &this.value else { return Poll::Ready(()) };
        if let (Route::Channel(pid, lane), Some(bytes)) = (&this.sender.route, codec::large_byte_vec(value)) {
            let header = codec::byte_vec_header(FRAME_DATA, bytes.len()).unwrap_or_else(|error| {
                panic!("constellation: cannot serialise a value to send ({:?}): {error}", this.sender.route)
            });
            return Sender::<T>::push_owned(*pid, lane, &header, &mut this.value, cx.waker());
        }
        let queued = this.sender.queue_or_wait(value, Some(cx.waker()));
        if queued.is_ready() {
            this.value = None;
        }
        queued
    }
}

impl<T: Serialize> futures::Sink<T> for Sender<T> {
    type Error = Infallible;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        runtime::with_net(|net| self.poll_room(cx, net).map(Ok))
    }

    fn start_send(self: Pin<&mut Self>, value: T) -> Result<(), Infallible> {
        let _ = self.queue_or_wait(&value, None);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let Route::Channel(pid, _) = self.route else {
            return Poll::Ready(Ok(()));
        };
        runtime::with_net(|net| {
            net.flush_peer(pid);
            let peer = net.peer(pid);
            if peer.gone() || peer.queued() == 0 {
                Poll::Ready(Ok(()))
            } else {
                peer.lane.lock().send_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.poll_flush(cx)
    }
}

/// The receiving end of a channel from process `pid`.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let child = spawn(Resources::default(), FnOnce!(|parent: Pid| {
///     Sender::<String>::new(parent).send("hi".to_string()).block();
/// }))
/// .block()
/// .unwrap();
/// let receiver = Receiver::<String>::new(child);
/// assert_eq!(receiver.recv().block(), Ok("hi".to_string()));
/// assert_eq!(receiver.recv().block(), Err(RecvError::PeerEnded));
/// # }
/// ```
pub struct Receiver<T: DeserializeOwned> {
    pid: Pid,
    /// Frames moved from the connection many at a time, received from here
    /// without the lock of the process's connection state.
    taken: TakenLock,
    _type: PhantomData<fn() -> T>,
}

/// The lock of a `Receiver`'s taken frames, taken once per value received:
/// biased to the thread that receives first, which then locks it with plain
/// stores. Another thread receiving on the same `Receiver` pays a
/// `membarrier` each time.
type TakenLock = BiasedLock<Taken>;

/// Frames a `Receiver` has taken from its peer's inbox and not yet received.
#[derive(Debug, Default)]
struct Taken {
    frames: Inbox,
    /// The peer's `Sender` sends another type (as of the frames taken).
    mismatched: bool,
}

/// What a frame means to a `Receiver` of `T`.
enum Frame<T> {
    /// Nothing for it: a `Sender` of the right type opened, or a value of a
    /// mismatched type after the mismatch was reported.
    Skip,
    /// A value or the reason there is none.
    Received(Result<T, RecvError>),
    /// Not a frame of the protocol: the connection cannot be trusted.
    Corrupt(codec::CodecError),
}

impl<T: DeserializeOwned> Frame<T> {
    /// [`Frame::of`] a large frame, whose payload is in two parts: a byte
    /// vector received is its buffer, not a copy.
    fn of_large(large: Large, mismatched: &mut bool) -> Frame<T> {
        if large.kind == FRAME_DATA && !*mismatched {
            return Frame::Received(
                codec::decode_split(large.head, large.body).map_err(|e| RecvError::Corrupt(e.to_string())),
            );
        }
        let mut payload = large.head.to_vec();
        payload.extend_from_slice(&large.body);
        Frame::of(large.kind, &payload, mismatched)
    }

    fn of(kind: u8, payload: &[u8], mismatched: &mut bool) -> Frame<T> {
        match kind {
            FRAME_OPEN => {
                let expected = std::any::type_name::<T>();
                let found = String::from_utf8_lossy(payload);
                *mismatched = found != expected;
                if !*mismatched {
                    return Frame::Skip;
                }
                Frame::Received(Err(RecvError::TypeMismatch {
                    expected: expected.to_owned(),
                    found: found.into_owned(),
                }))
            }
            FRAME_DATA if *mismatched => Frame::Skip,
            FRAME_DATA => Frame::Received(codec::decode(payload).map_err(|e| RecvError::Corrupt(e.to_string()))),
            FRAME_CLOSE => Frame::Received(Err(RecvError::SenderDropped)),
            other => Frame::Corrupt(codec::CodecError(format!("unknown frame kind {other}"))),
        }
    }
}

/// What a `Receiver` found in its peer's inbox.
enum Refill<T> {
    /// Small frames were moved to its own buffer.
    Taken,
    /// A value (a large one, parsed in place) or the end of the channel.
    Ready(Result<T, RecvError>),
    /// Nothing yet; the waker is kept.
    Pending,
}

impl<T: DeserializeOwned> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("pid", &self.pid).finish()
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Opens the channel from process `pid`.
    ///
    /// # Panics
    /// If this process already has a `Receiver` from `pid`, if `pid` is this
    /// process, or if [`init`](crate::init) has not been called.
    pub fn new(pid: Pid) -> Receiver<T> {
        let me = runtime::get().me;
        assert!(pid != me, "constellation: cannot open a Receiver in process {me} from itself");
        let mismatched = runtime::with_net(|net| {
            let peer = net.peer(pid);
            assert!(
                !peer.has_receiver,
                "constellation: this process already has a Receiver from {pid}; drop it before opening another"
            );
            peer.has_receiver = true;
            peer.mismatched
        });
        Receiver { pid, taken: TakenLock::new(Taken { frames: Inbox::default(), mismatched }), _type: PhantomData }
    }

    /// The process this channel receives from.
    pub fn remote_pid(&self) -> Pid {
        self.pid
    }

    /// Receives the next value.
    ///
    /// # Errors
    /// See [`RecvError`]: once the peer has dropped its `Sender` or ended and
    /// everything it sent has been received; on a type mismatch; on a value that
    /// cannot be decoded.
    ///
    /// # Cancel safety
    /// Cancel-safe: a value is taken from the channel only when the future
    /// resolves with it.
    pub fn recv(&self) -> Recv<'_, T> {
        Recv { receiver: self }
    }

    /// Receives from the frames taken earlier, refilling them from the peer's
    /// inbox (one lock for many small values) when they run out.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        let mut taken = self.taken.lock();
        loop {
            if let Some(result) = self.next_taken(&mut taken) {
                return Poll::Ready(result);
            }
            match runtime::with_net(|net| self.refill(net, &mut taken, cx)) {
                Refill::Taken => {}
                Refill::Ready(result) => return Poll::Ready(result),
                Refill::Pending => return Poll::Pending,
            }
        }
    }

    /// The next value among the frames taken, if the next frame holds one that
    /// decodes: the fast path of [`Recv::block`]. It carries back no error
    /// (a `Result<T, RecvError>` is large, and was copied through the stack
    /// per value); anything but a value is left to [`Receiver::next_taken`].
    #[inline(always)]
    fn next_value(taken: &mut Taken) -> Option<T> {
        if taken.mismatched {
            return None;
        }
        taken.frames.take_if(FRAME_DATA, |payload| codec::decode(payload).ok())
    }

    /// The next value (or end) among the frames taken, if there is one.
    /// Always inlined: its result, returned through memory, cost a
    /// store-forwarding stall per value (`#[inline]` alone left it a call).
    #[inline(always)]
    fn next_taken(&self, taken: &mut Taken) -> Option<Result<T, RecvError>> {
        let Taken { frames, mismatched } = taken;
        loop {
            let (kind, payload) = match frames.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(error) => return Some(Err(self.corrupt(error))),
            };
            if kind == FRAME_DATA && !*mismatched {
                // The common case, decoded straight into the result.
                return Some(codec::decode(frames.bytes(payload)).map_err(|e| RecvError::Corrupt(e.to_string())));
            }
            match Frame::of(kind, frames.bytes(payload), mismatched) {
                Frame::Skip => {}
                Frame::Received(result) => return Some(result),
                Frame::Corrupt(error) => return Some(Err(self.corrupt(error))),
            }
        }
    }

    /// Moves the small frames waiting in the peer's inbox to `taken`, or receives
    /// a large value in place, reading the connection inline if nothing waits.
    fn refill(&self, net: &mut Net, taken: &mut Taken, cx: &mut Context<'_>) -> Refill<T> {
        let mut read = false;
        let peer = net.peer(self.pid);
        peer.mismatched = taken.mismatched;
        // What is left of the buffer taken last (the start of a frame still
        // arriving) goes back in front of what came since.
        peer.inbox.unread(taken.frames.rest());
        taken.frames.clear();
        loop {
            let peer = net.peer(self.pid);
            if peer.inbox.lend(&mut taken.frames) {
                peer.lane.received();
                if peer.read_paused && peer.inbox.pending() < RECV_BOUND {
                    net.read_peer(self.pid);
                }
                return Refill::Taken;
            }
            let (kind, frame) = match peer.inbox.next_any() {
                Ok(Some(Next::InPlace(kind, payload))) => {
                    (kind, Frame::of(kind, peer.inbox.bytes(payload), &mut peer.mismatched))
                }
                Ok(Some(Next::Large(large))) => (large.kind, Frame::of_large(large, &mut peer.mismatched)),
                Ok(None) => {
                    peer.inbox.tidy();
                    if peer.gone() {
                        return Refill::Ready(Err(RecvError::PeerEnded));
                    }
                    let fd = net.peer_fd(self.pid);
                    let peer = net.peer(self.pid);
                    // The I/O thread reads what comes and wakes us, unless it left
                    // the input to a thread waiting on the socket itself (this one,
                    // now polling it again) or paused reading a full inbox.
                    let unread =
                        peer.attention.take_skipped() || peer.read_paused || fd.is_some_and(block::saw_readable);
                    if read || !unread {
                        if !peer.recv_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                            peer.recv_wakers.push(cx.waker().clone());
                        }
                        if let Some(fd) = fd {
                            block::waiting_on(fd, &peer.attention, cx.waker());
                        }
                        return Refill::Pending;
                    }
                    // This task reads what came itself: a wake-up for it would
                    // only make its thread poll once more.
                    let peer = net.peer(self.pid);
                    peer.recv_wakers.retain(|w| !w.will_wake(cx.waker()));
                    net.read_peer(self.pid);
                    read = true;
                    continue;
                }
                Err(error) => {
                    net.corrupt(self.pid, &error);
                    return Refill::Ready(Err(RecvError::Corrupt(error.to_string())));
                }
            };
            taken.mismatched = peer.mismatched;
            let result = match frame {
                Frame::Skip => continue,
                Frame::Received(result) => result,
                Frame::Corrupt(error) => {
                    net.corrupt(self.pid, &error);
                    return Refill::Ready(Err(RecvError::Corrupt(error.0)));
                }
            };
            if kind == FRAME_DATA {
                peer.lane.received();
            }
            if peer.read_paused && peer.inbox.pending() < RECV_BOUND {
                net.read_peer(self.pid);
            }
            return Refill::Ready(result);
        }
    }

    /// Closes the connection to a peer that sent a corrupt frame.
    fn corrupt(&self, error: codec::CodecError) -> RecvError {
        runtime::with_net(|net| net.corrupt(self.pid, &error));
        RecvError::Corrupt(error.0)
    }
}

impl<T: DeserializeOwned> Drop for Receiver<T> {
    fn drop(&mut self) {
        let taken = self.taken.get_mut();
        runtime::with_net(|net| {
            let peer = net.peer(self.pid);
            // What was taken and not received waits for the next Receiver.
            peer.inbox.unread(taken.frames.rest());
            peer.mismatched = taken.mismatched;
            peer.has_receiver = false;
            peer.recv_wakers.clear();
            net.forget_if_done(self.pid);
        });
    }
}

/// The future of [`Receiver::recv`].
#[must_use = "futures do nothing unless polled: call .block() or .await"]
pub struct Recv<'a, T: DeserializeOwned> {
    receiver: &'a Receiver<T>,
}

impl<T: DeserializeOwned> fmt::Debug for Recv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recv").field("pid", &self.receiver.pid).finish()
    }
}

impl<T: DeserializeOwned> Recv<'_, T> {
    /// Receives on this thread, sleeping until a value comes: what
    /// [`Block::block`](crate::Block::block) does, without its set-up when a value
    /// is already here (the common case of a stream of small values).
    #[inline(always)]
    pub fn block(self) -> Result<T, RecvError> {
        let value = Receiver::next_value(&mut self.receiver.taken.lock());
        match value {
            Some(value) => Ok(value),
            None => self.block_slow(),
        }
    }

    /// [`Recv::block`] when the next of the frames taken is not a value.
    #[inline(never)]
    fn block_slow(self) -> Result<T, RecvError> {
        crate::Block::block(self)
    }
}

impl<T: DeserializeOwned> Future for Recv<'_, T> {
    type Output = Result<T, RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.receiver.poll_recv(cx)
    }
}

impl<T: DeserializeOwned> futures::Stream for Receiver<T> {
    /// Values until the channel ends; use [`Receiver::recv`] to see why it ended.
    type Item = T;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.poll_recv(cx).map(Result::ok)
    }
}
