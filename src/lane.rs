//! `Lane`: the outgoing side of the connection to one peer (its queued frames and
//! who waits on them), shared by the process's [`Net`](crate::net::Net) and the
//! `Sender` to that peer under a lock of its own.
//!
//! A value sent while the buffer has room takes this lock only: no lookup in the
//! peer table and no contention with the I/O thread, which takes it once per
//! batch it writes. Everything else (the socket, the dirty list, waking the I/O
//! thread) happens under `Net`'s lock, taken before this one.
//!
//! The lock is biased to the first thread that sends (see [`BiasedLock`]):
//! that thread locks it with plain stores. The other party, the I/O thread,
//! takes it once per batch it writes, and pays a `membarrier` each time; it
//! leaves alone a lane whose sender streams and writes it itself (see
//! [`Lane::inline_writes`]).

use crate::{
    biased::{BiasedGuard as MutexGuard, BiasedLock},
    codec::CodecError,
    net::SEND_BOUND,
    outbox::Outbox,
    sys,
};
use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    task::Waker,
};

/// The outgoing side of one peer.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    state: BiasedLock<LaneState>,
    /// A value was received from the peer since one was last sent to it (the
    /// next value sent is a reply, written at once).
    reply_due: AtomicBool,
    /// How many times a sender has written the lane to its socket itself;
    /// changed under the lock, read by the I/O thread without it (see
    /// [`Lane::inline_writes`]).
    inline_writes: AtomicU32,
}

/// What [`Lane`]'s lock guards.
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    /// Frames queued and not yet written.
    pub(crate) out: Outbox,
    /// Whether the peer is on `Net`'s list of peers with frames to write.
    pub(crate) dirty: bool,
    /// The peer is gone: values sent to it are dropped.
    pub(crate) closed: bool,
    /// A sender waiting for room.
    pub(crate) send_waker: Option<Waker>,
    /// The established socket to the peer, once nothing but frames remains to
    /// be written on it: a sender writes to it itself past [`WRITE_INLINE`].
    /// Cleared (under this lock) before the socket is closed.
    pub(crate) socket: Option<RawFd>,
    /// After a write the socket did not take in full, how many bytes must be
    /// queued before the sender writes itself again (0: [`WRITE_INLINE`]).
    /// Cleared when the I/O thread writes.
    pub(crate) write_again_at: usize,
}

/// How many queued bytes a sender writes itself instead of leaving them to the
/// I/O thread (which waits a moment for more before it writes): a stream of
/// small values then flows without waiting for the I/O thread.
const WRITE_INLINE: usize = 16 * 1024;

/// What [`Lane::try_append`] did.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Queued (or dropped, the peer being gone); `Net` has to hear of it if
    /// `newly_dirty` (put the peer on its dirty list) or `reply` (write it now).
    Queued { newly_dirty: bool, reply: bool },
    /// The buffer is full: the caller waits for room through `Net`.
    Full,
}

impl Lane {
    /// Locks the state, for `Net` (the I/O thread, or a sender's thread in
    /// `Net`'s code): the lock stays biased to the thread that sends.
    pub(crate) fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock_unowned()
    }

    /// How many times a sender has written the lane to its socket itself: the
    /// I/O thread leaves a lane whose count moved since its last look to its
    /// sender, which streams, instead of taking its lock to write a part.
    pub(crate) fn inline_writes(&self) -> u32 {
        self.inline_writes.load(Ordering::Relaxed)
    }

    /// Notes that a value was received from the peer.
    pub(crate) fn received(&self) {
        if !self.reply_due.load(Ordering::Relaxed) {
            self.reply_due.store(true, Ordering::Relaxed);
        }
    }

    /// Queues a large `Vec<u8>` value without copying it: `header` (its frame's
    /// header), then the vector `take` hands over, unless the buffer is full
    /// (then `take` is not called).
    pub(crate) fn try_push_owned(&self, header: &[u8], take: impl FnOnce() -> Vec<u8>) -> Appended {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            drop(take());
            return Appended::Queued { newly_dirty: false, reply: false };
        }
        if state.out.queued() >= SEND_BOUND {
            return Appended::Full;
        }
        let was_empty = state.out.queued() == 0;
        state.out.push_chunk(header, take());
        self.queued_one(state, was_empty)
    }

    /// The fast path of a send: appends the frames `append` writes unless the
    /// buffer is full. Always inlined into the sender's loop, like the rest of
    /// the fast path of [`Send::block`](crate::channel::Send::block).
    #[inline(always)]
    pub(crate) fn try_append(
        &self,
        append: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Appended, CodecError> {
        let mut state = self.state.lock();
        if state.closed {
            return Ok(Appended::Queued { newly_dirty: false, reply: false });
        }
        if state.out.queued() >= SEND_BOUND {
            return Ok(Appended::Full);
        }
        let was_empty = state.out.queued() == 0;
        state.out.append(append)?;
        if state.out.queued() >= WRITE_INLINE.max(state.write_again_at) {
            self.write_inline(&mut state);
        }
        Ok(self.queued_one(state, was_empty))
    }

    /// Writes what is queued to the socket from the sender's thread, if the
    /// lane has its socket: once per [`WRITE_INLINE`] bytes of a stream, so
    /// kept out of the inlined fast path.
    #[cold]
    #[inline(never)]
    fn write_inline(&self, state: &mut LaneState) {
        let Some(fd) = state.socket else { return };
        // What cannot be written now stays queued for the I/O thread, which
        // hears when the socket has room again (or has failed).
        let _ = state.out.write_to(&mut sys::SocketWriter(fd));
        // Under the lock: no other writer of the count can interleave.
        let writes = self.inline_writes.load(Ordering::Relaxed);
        self.inline_writes.store(writes.wrapping_add(1), Ordering::Relaxed);
        // A full socket is tried again once as much more is queued, not for
        // every value (each try would be a failed system call).
        let left = state.out.queued();
        state.write_again_at = if left > 0 { left + WRITE_INLINE } else { 0 };
    }

    /// Marks the lane dirty after a value was queued, and says what `Net` must do.
    #[inline(always)]
    fn queued_one(&self, mut state: MutexGuard<'_, LaneState>, was_empty: bool) -> Appended {
        let newly_dirty = !std::mem::replace(&mut state.dirty, true);
        drop(state);
        let reply = self.reply_due.load(Ordering::Relaxed) && self.reply_due.swap(false, Ordering::Relaxed);
        Appended::Queued { newly_dirty, reply: reply && was_empty }
    }
}
