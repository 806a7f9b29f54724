//! `BiasedLock`: a lock for data that one thread takes almost every time, such
//! as a channel's sending or receiving side in a loop.
//!
//! The first thread to lock it with [`BiasedLock::lock`] becomes its owner
//! ([`BiasedLock::lock_unowned`] never makes one), and the owner locks and
//! unlocks it with plain loads and stores: no atomic read-modify-write, which
//! costs ~12 ns on the development machine and drains the store buffer. Any
//! other thread takes a spin lock, says it wants in, and calls
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a full memory
//! barrier on every CPU running a thread of this process; after it, an owner
//! inside is seen inside, and an owner coming in sees it wanted, and takes the
//! spin lock too. This is Dekker's mutual exclusion with the owner's half of
//! the barrier moved to the other side (the asymmetric barriers of Folly and
//! liburcu work the same way).
//!
//! A process where `membarrier` is missing or refused has no owners: every
//! thread takes the spin lock. So has a lock whose other threads paid too many
//! `membarrier`s lately (see [`BARRIERS_PER_WINDOW`]).

use crate::sys;
use spin::{
    mutex::{SpinMutex, SpinMutexGuard},
    relax::Yield,
};
use std::{
    cell::UnsafeCell,
    fmt,
    ops::{Deref, DerefMut},
    sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering},
};

/// No thread owns the lock yet.
const UNOWNED: usize = 0;
/// The lock has no owner for good: `membarrier` is not available, or other
/// threads took it too often.
const NO_OWNER: usize = usize::MAX;

/// A lock biased to the first thread that takes it.
pub(crate) struct BiasedLock<T> {
    /// The owning thread's marker (see [`thread_marker`]), [`UNOWNED`] or
    /// [`NO_OWNER`]. Changed only under `slow`.
    owner: AtomicUsize,
    /// The owner is inside; stored by the owner alone.
    owner_in: AtomicBool,
    /// A thread other than the owner is in: the owner takes `slow` as well
    /// until it is cleared. Set for good once the lock has no owner for good.
    others: AtomicBool,
    /// Taken by every thread but the owner on its fast path.
    slow: SpinMutex<Contention, Yield>,
    data: UnsafeCell<T>,
}

/// How often other threads have waited out the owner lately.
struct Contention {
    /// When the current window began (monotonic ns).
    window_start: u64,
    /// `membarrier`s in the current window.
    barriers: u32,
}

/// How long a window of [`Contention`] is.
const WINDOW_NS: u64 = 100_000_000;
/// Past this many `membarrier`s in a window, the lock drops its owner for
/// good and is a spin lock from then on: the owner has changed threads (a task
/// that moved), or others take it often, and a `membarrier` costs ~23 µs
/// while the owner runs.
const BARRIERS_PER_WINDOW: u32 = 200;

// SAFETY: the lock hands out `&mut T` to one thread at a time (see the module
// doc), so sharing it between threads needs `T: Send` only, as `Mutex` does.
unsafe impl<T: Send> Sync for BiasedLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for BiasedLock<T> {}

impl<T: Default> Default for BiasedLock<T> {
    fn default() -> Self {
        BiasedLock::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for BiasedLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BiasedLock").finish_non_exhaustive()
    }
}

/// An address unique to the calling thread among the live threads.
#[inline]
fn thread_marker() -> usize {
    thread_local! {
        static MARKER: u8 = const { 0 };
    }
    MARKER.with(|marker| marker as *const u8 as usize)
}

impl<T> BiasedLock<T> {
    /// A lock holding `data`, not yet owned.
    pub(crate) const fn new(data: T) -> BiasedLock<T> {
        BiasedLock {
            owner: AtomicUsize::new(UNOWNED),
            owner_in: AtomicBool::new(false),
            others: AtomicBool::new(false),
            slow: SpinMutex::new(Contention { window_start: 0, barriers: 0 }),
            data: UnsafeCell::new(data),
        }
    }

    /// The data, through exclusive access to the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Locks it, making the calling thread its owner if it has none yet.
    #[inline]
    pub(crate) fn lock(&self) -> BiasedGuard<'_, T> {
        self.lock_as(true)
    }

    /// Locks it without becoming its owner: for a thread that takes it now
    /// and then (the I/O thread).
    #[inline]
    pub(crate) fn lock_unowned(&self) -> BiasedGuard<'_, T> {
        self.lock_as(false)
    }

    #[inline]
    fn lock_as(&self, claim: bool) -> BiasedGuard<'_, T> {
        let me = thread_marker();
        if self.owner.load(Ordering::Relaxed) == me {
            self.owner_in.store(true, Ordering::Relaxed);
            // The store above may still sit in this CPU's store buffer when
            // the load below runs; a thread that wants in makes up for that
            // with `membarrier`. The compiler must not swap them.
            compiler_fence(Ordering::SeqCst);
            if !self.others.load(Ordering::Acquire) {
                return BiasedGuard { lock: self, slow: None };
            }
            self.owner_in.store(false, Ordering::Release);
        }
        self.lock_slow(me, claim)
    }

    /// Locks it through the spin lock, waiting out the owner if it is inside.
    #[cold]
    fn lock_slow(&self, me: usize, claim: bool) -> BiasedGuard<'_, T> {
        let mut slow = self.slow.lock();
        match self.owner.load(Ordering::Relaxed) {
            // Sent here by `others`: whoever set it is gone (`slow` is ours).
            owner if owner == me => {}
            NO_OWNER => {}
            UNOWNED => {
                // No owner can appear while `slow` is held: claiming takes it.
                if claim {
                    let owner = if sys::membarrier_ready() { me } else { NO_OWNER };
                    self.owner.store(owner, Ordering::Relaxed);
                }
            }
            _ => {
                self.others.store(true, Ordering::Relaxed);
                // After this, an owner inside is seen inside, and an owner
                // coming in sees `others`.
                sys::membarrier();
                while self.owner_in.load(Ordering::Acquire) {
                    sys::yield_now();
                }
                let now = sys::monotonic_ns();
                if now.saturating_sub(slow.window_start) > WINDOW_NS {
                    *slow = Contention { window_start: now, barriers: 0 };
                }
                slow.barriers += 1;
                if slow.barriers > BARRIERS_PER_WINDOW {
                    // `others` stays set: an owner that read itself the owner
                    // just before still turns back.
                    self.owner.store(NO_OWNER, Ordering::Relaxed);
                }
            }
        }
        BiasedGuard { lock: self, slow: Some(slow) }
    }
}

/// Access to a [`BiasedLock`]'s data; unlocks when dropped.
pub(crate) struct BiasedGuard<'a, T> {
    lock: &'a BiasedLock<T>,
    /// The spin lock, unless the owner came in on its fast path.
    slow: Option<SpinMutexGuard<'a, Contention>>,
}

impl<T> Deref for BiasedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is the one holder of the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for BiasedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard is the one holder of the lock.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for BiasedGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        match self.slow.take() {
            None => self.lock.owner_in.store(false, Ordering::Release),
            Some(slow) => {
                // The owner may come in on its fast path again (the next
                // thread in says otherwise again, and waits it out), unless
                // the lock has dropped its owner for good.
                if self.lock.owner.load(Ordering::Relaxed) != NO_OWNER {
                    self.lock.others.store(false, Ordering::Release);
                }
                drop(slow);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BiasedLock;
    use std::sync::Arc;

    #[test]
    fn threads_taking_turns_with_the_owner_lose_no_update() {
        let lock = Arc::new(BiasedLock::new(0u64));
        const EACH: u64 = 200_000;
        // This thread locks first: it owns the lock.
        drop(lock.lock());
        let others: Vec<_> = (0..2)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..EACH / 100 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for _ in 0..EACH {
            *lock.lock() += 1;
        }
        for other in others {
            other.join().expect("a thread panicked");
        }
        assert_eq!(*lock.lock(), EACH + 2 * (EACH / 100));
    }

    #[test]
    fn an_owner_and_a_thread_that_comes_now_and_then_lose_no_update() {
        // Few enough takes by the other thread that the lock keeps its owner.
        const TAKES: u64 = 150;
        let lock = Arc::new(BiasedLock::new((0u64, false)));
        drop(lock.lock());
        let other = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..TAKES {
                    lock.lock_unowned().0 += 1;
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                lock.lock_unowned().1 = true;
            })
        };
        let mut mine = 0;
        loop {
            let mut state = lock.lock();
            if state.1 {
                break;
            }
            state.0 += 1;
            mine += 1;
        }
        other.join().expect("the other thread panicked");
        assert_eq!(lock.lock().0, mine + TAKES);
        assert_ne!(lock.owner.load(std::sync::atomic::Ordering::Relaxed), super::NO_OWNER);
    }
}
