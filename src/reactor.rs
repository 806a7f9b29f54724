//! The background I/O thread: an edge-triggered epoll loop (mio) that accepts
//! connections, reads and writes when sockets become ready, fires timers, and
//! wakes the tasks waiting on any of it. Input on a socket that a blocked thread
//! waits on itself is left to that thread, decided without the connection lock.

use crate::{attention::Attention, lane::Lane, runtime::Runtime};
use mio::{event::Event, Events, Poll};
use parking_lot::Mutex;
use std::{
    cmp::Reverse,
    collections::{hash_map::Entry, BinaryHeap, HashMap},
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

/// What the reactor knows of established peer sockets without the connection
/// lock, to leave alone those whose input a blocked thread reads itself.
struct FastPath {
    sockets: HashMap<usize, (Arc<Attention>, Arc<Lane>)>,
    /// The [`Net::socket_epoch`](crate::net::Net::socket_epoch) `sockets` is valid for.
    epoch: u64,
    /// The attention of the connection to the bridge.
    control: Arc<Attention>,
}

impl FastPath {
    /// Whether the event is only input on a socket a thread waits on itself
    /// (and nothing waits to be written on it): then it is noted and left.
    fn leave(&self, event: &Event) -> bool {
        let only_input = event.is_readable() && !event.is_read_closed() && !event.is_error();
        if event.token() == crate::net::CONTROL {
            let only_input = only_input && !event.is_writable();
            return !self.control.listen_after_event() && only_input && self.control.leave_shared_input();
        }
        let Some((attention, lane)) = self.sockets.get(&event.token().0) else { return false };
        if attention.listen_after_event() {
            return false;
        }
        if only_input && attention.attended() && lane.lock().out.queued() == 0 {
            attention.skip();
            attention.disarm();
            return true;
        }
        false
    }
}

/// Runs the reactor loop forever on the current thread.
pub(crate) fn run(runtime: &'static Runtime, mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    let mut wake = Vec::new();
    let mut next_deadline: Option<Instant> = None;
    let (epoch, control) = {
        let net = runtime.net.lock();
        (net.socket_epoch(), net.control_attention())
    };
    let mut fast = FastPath { sockets: HashMap::new(), epoch: 0, control };
    let mut left = Vec::new();
    // Lanes left to senders that write them themselves: look again after a
    // coalescing pause.
    let mut streaming = false;
    loop {
        let mut timeout = next_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if streaming {
            timeout = Some(timeout.map_or(COALESCE, |t| t.min(COALESCE)));
        }
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
        // Input a blocked thread reads itself costs no lock here. If a socket was
        // dropped meanwhile (its key may now be another's), the events are handled
        // in full below after all.
        if fast.epoch != epoch.load(Ordering::SeqCst) {
            fast.sockets.clear();
        }
        left.clear();
        left.extend(events.iter().filter(|e| fast.leave(e)).map(Event::token));
        if fast.epoch != epoch.load(Ordering::SeqCst) {
            left.clear();
        }
        if events.is_empty() || events.iter().any(|e| !left.contains(&e.token())) {
            let mut net = runtime.net.lock();
            let now_epoch = epoch.load(Ordering::SeqCst);
            if fast.epoch != now_epoch {
                fast.sockets.clear();
                fast.epoch = now_epoch;
            }
            for event in events.iter() {
                if event.token() == crate::net::WAKER || left.contains(&event.token()) {
                    continue;
                }
                let key = event.token().0;
                if let Entry::Vacant(vacant) = fast.sockets.entry(key) {
                    if let Some(entry) = net.fast_path_of(key) {
                        vacant.insert(entry);
                    }
                }
                net.on_event(
                    event.token(),
                    event.is_readable(),
                    event.is_writable() || event.is_error(),
                    event.is_read_closed() || event.is_error(),
                );
            }
            streaming = net.flush_idle_dirty();
            net.flush_requests();
            wake.append(&mut net.to_wake);
            runtime.progress.notify_all();
        }
        next_deadline = runtime.timers.lock().fire_expired(Instant::now(), &mut wake);
        for waker in wake.drain(..) {
            waker.wake();
        }
    }
}
