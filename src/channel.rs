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
    codec,
    net::{FRAME_CLOSE, FRAME_DATA, FRAME_OPEN, RECV_BOUND, SEND_BOUND},
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
    /// The channel to a process's `Receiver`.
    Channel(Pid),
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
        runtime::with_net(|net| {
            let peer = net.peer(pid);
            assert!(
                !peer.has_sender,
                "constellation: this process already has a Sender to {pid}; drop it before opening another"
            );
            peer.has_sender = true;
            net.connect(pid);
            net.open_sender(pid, std::any::type_name::<T>());
        });
        Sender { route: Route::Channel(pid), _type: PhantomData }
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
            Route::Channel(pid) | Route::Mail { to: MailTo::Pid(pid), .. } => Some(*pid),
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
        let pid = match &self.route {
            Route::Channel(pid) => *pid,
            Route::Mail { .. } => {
                return runtime::with_net(|net| {
                    if net.bridge_is_lost() {
                        Err(SendError::Disconnected(value))
                    } else if net.control_queued() >= SEND_BOUND {
                        Err(SendError::Full(value))
                    } else {
                        self.queue(net, &value);
                        Ok(())
                    }
                });
            }
        };
        runtime::with_net(|net| {
            let peer = net.peer(pid);
            if peer.gone() {
                return Err(SendError::Disconnected(value));
            }
            if peer.queued() >= SEND_BOUND {
                return Err(SendError::Full(value));
            }
            self.queue(net, &value);
            Ok(())
        })
    }

    fn queue(&self, net: &mut crate::net::Net, value: &T) {
        let _ = self.queue_or_wait(net, value, None);
    }

    /// Queues `value`, or with a `waiter` waits while the buffer is full.
    fn queue_or_wait(&self, net: &mut crate::net::Net, value: &T, waiter: Option<&Waker>) -> Poll<()> {
        let result = match &self.route {
            Route::Channel(pid) => net.queue_value(*pid, value, waiter),
            Route::Mail { to, mailbox } => {
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
            }
        };
        match result {
            Poll::Ready(Err(error)) => {
                panic!("constellation: cannot serialise a value to send ({:?}): {error}", self.route)
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ready when the buffer has room (or the peer is gone).
    fn poll_room(&self, cx: &mut Context<'_>, net: &mut crate::net::Net) -> Poll<()> {
        let ready = match &self.route {
            Route::Channel(pid) => net.room_or_wait(*pid, cx.waker()),
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
        if let Route::Channel(pid) = self.route {
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

impl<T: Serialize> Future for Send<'_, T> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(value) = &this.value else { return Poll::Ready(()) };
        let queued = runtime::with_net(|net| this.sender.queue_or_wait(net, value, Some(cx.waker())));
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
        runtime::with_net(|net| self.queue(net, &value));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let Route::Channel(pid) = self.route else {
            return Poll::Ready(Ok(()));
        };
        runtime::with_net(|net| {
            net.flush_peer(pid);
            let peer = net.peer(pid);
            if peer.gone() || peer.queued() == 0 {
                Poll::Ready(Ok(()))
            } else {
                peer.send_waker = Some(cx.waker().clone());
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
    _type: PhantomData<fn() -> T>,
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
        runtime::with_net(|net| {
            let peer = net.peer(pid);
            assert!(
                !peer.has_receiver,
                "constellation: this process already has a Receiver from {pid}; drop it before opening another"
            );
            peer.has_receiver = true;
        });
        Receiver { pid, _type: PhantomData }
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

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        let expected = std::any::type_name::<T>();
        runtime::with_net(|net| {
            let mut read = false;
            loop {
                let peer = net.peer(self.pid);
                let frame = match peer.inbox.next() {
                    Ok(frame) => frame,
                    Err(error) => {
                        net.corrupt(self.pid, &error);
                        return Poll::Ready(Err(RecvError::Corrupt(error.to_string())));
                    }
                };
                let Some((kind, payload)) = frame else {
                    peer.inbox.tidy();
                    if peer.gone() {
                        return Poll::Ready(Err(RecvError::PeerEnded));
                    }
                    if read {
                        peer.recv_waker = Some(cx.waker().clone());
                        if let Some(fd) = net.peer_fd(self.pid) {
                            crate::block::waiting_on(fd);
                        }
                        return Poll::Pending;
                    }
                    net.read_peer(self.pid);
                    read = true;
                    continue;
                };
                let result = match kind {
                    FRAME_OPEN => {
                        let found = String::from_utf8_lossy(peer.inbox.bytes(payload));
                        peer.mismatched = found != expected;
                        if !peer.mismatched {
                            continue;
                        }
                        Err(RecvError::TypeMismatch { expected: expected.to_owned(), found: found.into_owned() })
                    }
                    FRAME_DATA if peer.mismatched => continue,
                    FRAME_DATA => {
                        peer.received_since_send = true;
                        codec::decode(peer.inbox.bytes(payload)).map_err(|e| RecvError::Corrupt(e.to_string()))
                    }
                    FRAME_CLOSE => Err(RecvError::SenderDropped),
                    other => {
                        let error = codec::CodecError(format!("unknown frame kind {other}"));
                        net.corrupt(self.pid, &error);
                        return Poll::Ready(Err(RecvError::Corrupt(error.0)));
                    }
                };
                if peer.read_paused && peer.inbox.pending() < RECV_BOUND {
                    net.read_peer(self.pid);
                }
                return Poll::Ready(result);
            }
        })
    }
}

impl<T: DeserializeOwned> Drop for Receiver<T> {
    fn drop(&mut self) {
        runtime::with_net(|net| {
            let peer = net.peer(self.pid);
            peer.has_receiver = false;
            peer.recv_waker = None;
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
