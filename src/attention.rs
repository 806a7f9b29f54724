//! `Attention`: what the I/O thread listens for on a peer's socket. A thread
//! blocked in `recv` waits in `poll` on the socket and reads it itself; while
//! one does, the I/O thread leaves that input alone, and stops listening for it
//! altogether until a task waits on the socket without a thread polling it. It
//! listens for room to write only while a write waits for it. The connection
//! to the bridge is handled the same way, as a *shared* socket: its input may
//! be for any task, so the I/O thread listens again once no thread polls it.

use crate::sys;
use parking_lot::Mutex;
use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

/// Whether threads wait on a peer's socket in `poll` themselves: while one does,
/// the I/O thread leaves the socket's input to it (without even taking the
/// connection lock) and notes that it did.
///
/// The first time it does, it also stops listening for the socket's input
/// ([`Attention::disarm`]), so later messages wake only the thread that reads
/// them (it still hears of the peer's close). That lasts until a task waits for
/// the input without a thread polling the socket for it: a future in another
/// executor, or one of several in a `block` (which polls one socket). From then
/// on the I/O thread listens for the socket's input for good
/// ([`Attention::arm`]).
#[derive(Debug, Default)]
pub(crate) struct Attention {
    /// Whether the socket's input may be for tasks other than those of the
    /// threads polling it (the connection to the bridge): a thread that stops
    /// waiting leaves input it did not take to the I/O thread.
    shared: bool,
    waiting: AtomicUsize,
    skipped: AtomicBool,
    /// Whether the I/O thread has stopped listening for input.
    disarmed: AtomicBool,
    /// Whether a task has waited for the input without polling the socket.
    unattended_waiter: AtomicBool,
    /// Whether the I/O thread listens for room to write. Not always: a Unix
    /// socket reports room each time its peer reads, which would wake the I/O
    /// thread for every message.
    output: AtomicBool,
    /// The socket's place in the I/O thread's epoll set, while it is open.
    registration: Mutex<Option<Registration>>,
}

/// Where an established socket is registered with the I/O thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration {
    pub(crate) epoll: RawFd,
    pub(crate) fd: RawFd,
    pub(crate) token: usize,
}

impl Attention {
    /// The attention of a socket whose input may be for any task of the process.
    pub(crate) fn shared() -> Attention {
        Attention { shared: true, ..Attention::default() }
    }

    /// Notes the socket now established for the peer, registered for input and
    /// output.
    pub(crate) fn bind(&self, registration: Registration) {
        let mut bound = self.registration.lock();
        *bound = Some(registration);
        self.disarmed.store(false, Ordering::SeqCst);
        self.output.store(true, Ordering::SeqCst);
    }

    /// Has the I/O thread listen for room to write, or stop: called by whoever
    /// wrote, under the lock of what waits to be written, with whether
    /// anything still does. Room already there is reported at once.
    pub(crate) fn want_output(&self, wanted: bool) {
        if self.output.load(Ordering::Relaxed) == wanted {
            return;
        }
        let bound = self.registration.lock();
        let Some(r) = *bound else { return };
        let input = !self.disarmed.load(Ordering::SeqCst);
        match sys::epoll_listen(r.epoll, r.fd, r.token, input, wanted) {
            Ok(()) => self.output.store(wanted, Ordering::SeqCst),
            Err(error) => log::warn!("changing what a connection is watched for: {error}"),
        }
    }

    /// Forgets socket `fd` before it is closed, so its number, once reused, is
    /// never touched here.
    pub(crate) fn unbind(&self, fd: RawFd) {
        let mut bound = self.registration.lock();
        if bound.is_some_and(|r| r.fd == fd) {
            *bound = None;
        }
    }

    /// Called by the I/O thread as it leaves input to a thread polling the
    /// socket: stops listening for the socket's input, unless a task has waited
    /// for it without polling the socket.
    pub(crate) fn disarm(&self) {
        if self.disarmed.load(Ordering::Relaxed) || self.unattended_waiter.load(Ordering::Relaxed) {
            return;
        }
        let bound = self.registration.lock();
        let Some(r) = *bound else { return };
        if self.attended()
            && !self.unattended_waiter.load(Ordering::SeqCst)
            && sys::epoll_listen(r.epoll, r.fd, r.token, false, self.output.load(Ordering::SeqCst)).is_ok()
        {
            self.disarmed.store(true, Ordering::SeqCst);
        }
    }

    /// Called by the I/O thread for any event on the socket. While it does not
    /// listen for input, an event means room to write or the peer's close, and
    /// mio tells a close only with input: if the peer has closed, it listens
    /// again, which raises the close afresh, as input. Returns whether it did.
    pub(crate) fn listen_after_event(&self) -> bool {
        if !self.disarmed.load(Ordering::Relaxed) {
            return false;
        }
        let bound = self.registration.lock();
        match *bound {
            Some(r) if self.disarmed.load(Ordering::SeqCst) && sys::peer_closed(r.fd) => {
                self.listen(r);
                true
            }
            _ => false,
        }
    }

    /// A task waits for the input without a thread polling the socket for it:
    /// has the I/O thread listen for the socket's input again, and for good.
    /// Input already there raises an event at once.
    pub(crate) fn arm(&self) {
        if self.unattended_waiter.load(Ordering::Relaxed) && !self.disarmed.load(Ordering::Relaxed) {
            return;
        }
        let bound = self.registration.lock();
        self.unattended_waiter.store(true, Ordering::SeqCst);
        if let (Some(r), true) = (*bound, self.disarmed.load(Ordering::SeqCst)) {
            self.listen(r);
        }
    }

    /// Has the I/O thread listen for input on `r` again; called with the
    /// registration locked.
    fn listen(&self, r: Registration) {
        if let Err(error) = sys::epoll_listen(r.epoll, r.fd, r.token, true, self.output.load(Ordering::SeqCst)) {
            log::warn!("listening for a connection's input again: {error}");
        }
        self.disarmed.store(false, Ordering::SeqCst);
    }

    /// A thread starts waiting on the socket itself.
    pub(crate) fn begin_wait(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
    }

    /// A thread stops waiting on the socket itself. On a shared socket, the
    /// last to stop has the I/O thread listen again, for the tasks that wait
    /// without polling it (input left to the waiting threads that none took
    /// raises an event at once).
    pub(crate) fn end_wait(&self) {
        let left = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        if self.shared && left == 0 {
            // Under the lock `disarm` holds while it looks for waiting threads.
            let bound = self.registration.lock();
            if let (Some(r), true) = (*bound, self.disarmed.load(Ordering::SeqCst)) {
                self.listen(r);
            }
        }
    }

    /// For the I/O thread, lock-free: whether to leave input on a shared socket
    /// to the threads polling it. Notes the input left before it looks for
    /// them, and they look for such input after they stop waiting
    /// ([`Attention::end_wait`]), so input is never left to no one.
    pub(crate) fn leave_shared_input(&self) -> bool {
        self.skip();
        if !self.attended() {
            // The I/O thread reads it itself.
            self.take_skipped();
            return false;
        }
        self.disarm();
        true
    }

    /// Whether a thread waits on the socket itself.
    pub(crate) fn attended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Notes that the I/O thread left input on the socket to its reader.
    pub(crate) fn skip(&self) {
        self.skipped.store(true, Ordering::SeqCst);
    }

    /// Whether input was left unread since the last call (or the last read).
    pub(crate) fn take_skipped(&self) -> bool {
        self.skipped.load(Ordering::Relaxed) && self.skipped.swap(false, Ordering::SeqCst)
    }
}
