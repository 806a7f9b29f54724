//! The background I/O thread: an edge-triggered epoll loop (mio) that accepts
//! connections, reads and writes when sockets become ready, fires timers, and
//! wakes the tasks waiting on any of it.

use crate::runtime::Runtime;
use mio::{Events, Poll};
use parking_lot::Mutex;
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Waker,
    time::Instant,
};

/// One pending timer: fired (and its waker woken) once its deadline passes.
#[derive(Debug, Default)]
pub(crate) struct TimerSlot {
    pub(crate) fired: AtomicBool,
    pub(crate) waker: Mutex<Option<Waker>>,
}

#[derive(Debug)]
struct TimerEntry {
    deadline: Instant,
    seq: u64,
    slot: Arc<TimerSlot>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// The timers of the process, ordered by deadline.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    seq: u64,
}

impl Timers {
    /// Adds a timer; returns whether it is now the earliest (the reactor must
    /// recompute its sleep).
    pub(crate) fn add(&mut self, deadline: Instant, slot: Arc<TimerSlot>) -> bool {
        self.seq += 1;
        let earliest = self.heap.peek().is_none_or(|Reverse(first)| deadline < first.deadline);
        self.heap.push(Reverse(TimerEntry { deadline, seq: self.seq, slot }));
        earliest
    }

    fn fire_expired(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        while let Some(Reverse(first)) = self.heap.peek() {
            if first.deadline > now {
                return Some(first.deadline);
            }
            let Reverse(entry) = self.heap.pop().expect("peeked");
            entry.slot.fired.store(true, Ordering::Release);
            wake.extend(entry.slot.waker.lock().take());
        }
        None
    }
}

/// How long the reactor lets frames gather before writing them, when nothing
/// else woke it.
const COALESCE: std::time::Duration = std::time::Duration::from_micros(50);

/// Runs the reactor loop forever on the current thread.
pub(crate) fn run(runtime: &'static Runtime, mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    let mut wake = Vec::new();
    let mut next_deadline: Option<Instant> = None;
    loop {
        let timeout = next_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(error) = poll.poll(&mut events, timeout) {
            if error.kind() != std::io::ErrorKind::Interrupted {
                log::error!("the I/O loop failed: {error}");
            }
            continue;
        }
        // Woken only to write what senders queued: give them a moment to queue
        // more, so writes coalesce. Blocking calls flush for themselves first.
        if events.iter().all(|e| e.token() == crate::net::WAKER) && !events.is_empty() {
            std::thread::sleep(COALESCE);
        }
        {
            let mut net = runtime.net.lock();
            for event in events.iter() {
                if event.token() == crate::net::WAKER {
                    continue;
                }
                net.on_event(
                    event.token(),
                    event.is_readable(),
                    event.is_writable() || event.is_error(),
                    event.is_read_closed() || event.is_error(),
                );
            }
            net.flush_dirty();
            net.flush_requests();
            wake.append(&mut net.to_wake);
        }
        next_deadline = runtime.timers.lock().fire_expired(Instant::now(), &mut wake);
        for waker in wake.drain(..) {
            waker.wake();
        }
    }
}
