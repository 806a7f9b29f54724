//! Running futures on the current thread (`Block`), waiting in `poll` on the
//! socket a blocked task reads (see [`Attention`]), and time: `sleep`, `timeout`.

use crate::{attention::Attention, reactor::TimerSlot, runtime, sys};
use std::{
    cell::{Cell, OnceCell, RefCell},
    future::Future,
    mem::ManuallyDrop,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    thread::{self, Thread},
    time::{Duration, Instant},
};

/// Wakes a thread blocked in [`Block::block`]: it either sleeps in `park`, or in
/// `poll` on the socket it waits for plus its eventfd (so a message wakes it
/// straight from the kernel, without a hop through the I/O thread).
struct ThreadWaker {
    thread: Thread,
    notified: AtomicBool,
    polling: AtomicBool,
    eventfd: Option<OwnedFd>,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            match &self.eventfd {
                Some(fd) if self.polling.load(Ordering::SeqCst) => sys::eventfd_signal(fd.as_raw_fd()),
                _ => self.thread.unpark(),
            }
        }
    }
}

/// A socket a task waits to read, its [`Attention`], and the task's waker.
type Wait = (RawFd, Arc<Attention>, Waker);

/// What the `block`s of one thread share, in one thread-local (one lookup per
/// `block`: a value already waiting is received in a few nanoseconds).
struct ThreadBlock {
    /// The socket the future being blocked on waits to read, if it is one.
    wait: RefCell<Option<Wait>>,
    /// Whether this thread is polling the future of a `block`.
    in_block: Cell<bool>,
    /// The socket this thread's last wait in `poll` saw readable.
    readable: Cell<Option<RawFd>>,
    /// This thread's waker for `block`, made at its first `block`: a stale
    /// wake-up from an earlier future only makes the loop poll once more.
    waker: OnceCell<Arc<ThreadWaker>>,
}

thread_local! {
    static THREAD: ThreadBlock = const {
        ThreadBlock { wait: RefCell::new(None), in_block: Cell::new(false), readable: Cell::new(None), waker: OnceCell::new() }
    };
}

impl ThreadBlock {
    #[inline]
    fn waker(&self) -> &Arc<ThreadWaker> {
        self.waker.get_or_init(|| {
            Arc::new(ThreadWaker {
                thread: thread::current(),
                notified: AtomicBool::new(false),
                polling: AtomicBool::new(false),
                eventfd: sys::eventfd().ok(),
            })
        })
    }
}

/// Notes that the current task waits for `fd` to become readable, so a thread
/// blocked on it can wait in `poll` on the socket itself; while it does, it
/// counts itself in `attended` and reads what comes itself. A `block` polls the
/// socket of the last task to wait: the I/O thread listens for the others.
pub(crate) fn waiting_on(fd: RawFd, attended: &Arc<Attention>, waker: &Waker) {
    let previous = THREAD.with(|thread| {
        thread.in_block.get().then(|| thread.wait.borrow_mut().replace((fd, attended.clone(), waker.clone())))
    });
    let Some(previous) = previous else {
        attended.arm();
        return;
    };
    if let Some((_, previous, _)) = previous {
        // Two parts of one future may wait on the same socket (two mailboxes).
        if !Arc::ptr_eq(&previous, attended) {
            previous.arm();
        }
    }
}

/// Whether this thread's last wait in `poll` saw `fd` readable: then the I/O
/// thread may have left its input alone, and the caller reads it.
pub(crate) fn saw_readable(fd: RawFd) -> bool {
    THREAD.with(|thread| thread.readable.get() == Some(fd))
}

/// Runs a future to completion on the current thread.
///
/// Implemented for every future: `spawn(..).block()`, `sender.send(v).block()`,
/// `receiver.recv().block()`.
///
/// # Examples
/// ```
/// use constellation::Block;
/// assert_eq!(async { 6 * 7 }.block(), 42);
/// ```
pub trait Block: Future {
    /// Polls the future on this thread, sleeping while the future waits.
    fn block(self) -> Self::Output
    where
        Self: Sized,
    {
        THREAD.with(|thread| block_on(thread, self))
    }
}

/// Marks this thread as polling the future of a `block` until dropped (also if
/// the future panics), restoring what it was (blocks may nest).
struct InBlock<'a> {
    in_block: &'a Cell<bool>,
    was: bool,
}

impl InBlock<'_> {
    fn enter(in_block: &Cell<bool>) -> InBlock<'_> {
        InBlock { in_block, was: in_block.replace(true) }
    }
}

impl Drop for InBlock<'_> {
    fn drop(&mut self) {
        self.in_block.set(self.was);
    }
}

/// A thread's count in a socket's `attended`, given back when dropped (also if
/// the future panics).
struct Attending(Arc<Attention>);

impl Drop for Attending {
    fn drop(&mut self) {
        self.0.end_wait();
    }
}

/// The loop of [`Block::block`], with this thread's waker borrowed: a call costs
/// no reference-count traffic unless the future keeps the waker.
fn block_on<F: Future>(thread: &ThreadBlock, future: F) -> F::Output {
    let state = thread.waker();
    // SAFETY: `Waker::from` takes over one count of the `Arc` without changing it,
    // and `ManuallyDrop` never gives it back, so the count is untouched; `state`,
    // held by this thread's local, outlives the waker, and clones of the waker
    // take counts of their own.
    let waker = ManuallyDrop::new(Waker::from(unsafe { Arc::from_raw(Arc::as_ptr(state)) }));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    // The socket this thread waited on, counted in its `attended` until the future
    // has been polled once more (and has read what woke it).
    let mut attending: Option<Attending> = None;
    // The socket this thread last polled: if the future waits on another one
    // next, a part of it may still wait on this one, unpolled.
    let mut polled_socket: Option<Arc<Attention>> = None;
    loop {
        // Left by a future that called `block` inside its `poll`: no thread will
        // poll that socket, so the I/O thread must listen for it.
        if let Some((_, orphan, _)) = thread.wait.borrow_mut().take() {
            orphan.arm();
        }
        let polled = {
            let _in_block = InBlock::enter(&thread.in_block);
            future.as_mut().poll(&mut cx)
        };
        thread.readable.set(None);
        drop(attending.take());
        if let Poll::Ready(output) = polled {
            return output;
        }
        // Whatever was queued goes out before this thread sleeps.
        runtime::flush_queued();
        let waiting = thread.wait.borrow_mut().take();
        if let Some(previous) = polled_socket.take() {
            if !waiting.as_ref().is_some_and(|(_, attention, _)| Arc::ptr_eq(attention, &previous)) {
                previous.arm();
            }
        }
        match (waiting, &state.eventfd) {
            (Some((socket, attended, task)), Some(eventfd)) => {
                polled_socket = Some(attended.clone());
                attended.begin_wait();
                attending = Some(Attending(attended));
                state.polling.store(true, Ordering::SeqCst);
                if !state.notified.swap(false, Ordering::SeqCst) {
                    let events = [(socket, libc::POLLIN), (eventfd.as_raw_fd(), libc::POLLIN)];
                    if let Ok(revents) = sys::poll(events, None) {
                        if revents[0] != 0 {
                            thread.readable.set(Some(socket));
                            // The I/O thread wakes no one for input it leaves to
                            // us: wake the task, if it is part of the future.
                            if !task.will_wake(&waker) {
                                task.wake();
                            }
                        }
                        if revents[1] != 0 {
                            sys::eventfd_clear(eventfd.as_raw_fd());
                        }
                    }
                    state.notified.store(false, Ordering::SeqCst);
                }
                state.polling.store(false, Ordering::SeqCst);
            }
            (waiting, _) => {
                if let Some((_, attention, _)) = waiting {
                    attention.arm();
                }
                while !state.notified.swap(false, Ordering::Acquire) {
                    thread::park();
                }
            }
        }
    }
}

impl<F: Future> Block for F {}

/// A future that completes after a duration. See [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    slot: Option<Arc<TimerSlot>>,
}

/// Waits for `duration`, without blocking the thread when used in an async context.
///
/// # Panics
/// If [`init`](crate::init) has not been called.
pub fn sleep(duration: Duration) -> Sleep {
    runtime::get();
    Sleep { deadline: Instant::now() + duration, slot: None }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        match &self.slot {
            Some(slot) => {
                *slot.waker.lock() = Some(cx.waker().clone());
                if slot.fired.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
            }
            None => {
                let slot = Arc::new(TimerSlot::default());
                *slot.waker.lock() = Some(cx.waker().clone());
                runtime::add_timer(self.deadline, slot.clone());
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

/// The error of a [`timeout`] whose time ran out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the time ran out before the future completed")
    }
}

impl std::error::Error for Elapsed {}

/// A future that completes with its inner future's output, or with [`Elapsed`]
/// once `duration` has passed. See [`timeout`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

/// Runs `future` for at most `duration`.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// use std::time::Duration;
/// # fn main() {
/// init(Resources::default());
/// let never = futures::future::pending::<()>();
/// assert_eq!(timeout(Duration::from_millis(10), never).block(), Err(Elapsed));
/// # }
/// ```
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout { future: Box::pin(future), sleep: sleep(duration) }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}
