//! `Pool`: worker processes kept alive to run many small tasks, so a task does
//! not pay for a spawn. A worker that dies (its task panicked, or it was killed)
//! is replaced, and its task's result says how it ended.

use crate::{
    codec, job::JobError, spawn, spawn::SpawnOptions, Monitor, Pid, ProcessFn, Receiver, Resources, Sender, Spawn,
};
use futures::Stream;
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

/// One task for a worker: a task function of this binary and its closure.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    id: u64,
    entry: isize,
    arg: Vec<u8>,
}

/// Decodes a closure, runs it, and encodes its value.
fn run_task<F, T>(arg: &[u8]) -> Vec<u8>
where
    F: serde_closure::traits::FnOnce<(), Output = T> + DeserializeOwned,
    T: Serialize,
{
    let f: F = codec::decode(arg).unwrap_or_else(|e| panic!("constellation: cannot decode a pool task: {e}"));
    codec::encode(&f.call_once(())).unwrap_or_else(|e| panic!("constellation: cannot encode a pool task's value: {e}"))
}

/// What a worker process runs: tasks from its pool, one at a time, until the
/// pool drops its channel.
#[derive(Serialize, Deserialize)]
struct Worker;

impl serde_closure::traits::FnOnce<(Pid,)> for Worker {
    type Output = ();
    fn call_once(self, (pool,): (Pid,)) {
        let tasks = Receiver::<Task>::new(pool);
        let results = Sender::<(u64, Vec<u8>)>::new(pool);
        while let Ok(task) = tasks.recv().block() {
            // SAFETY: the pool computed `entry` with `task_entry` in this same binary.
            let value = unsafe { spawn::call_task(task.entry, &task.arg) };
            results.send((task.id, value)).block();
        }
    }
}

struct Running {
    pid: Pid,
    tasks: Sender<Task>,
    results: Receiver<(u64, Vec<u8>)>,
    down: Monitor,
    busy: Option<u64>,
}

struct Inner {
    size: usize,
    resources: Resources,
    workers: Vec<Running>,
    starting: Vec<Spawn>,
    queue: VecDeque<Task>,
    done: HashMap<u64, Result<Vec<u8>, JobError>>,
    next_id: u64,
    wakers: Vec<Waker>,
}

/// A pool of `n` worker processes for many small tasks.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let pool = Pool::new(4, Resources::default());
/// let results: Vec<_> = (0..100u64).map(|i| pool.run(FnOnce!(move || i * i))).collect();
/// let squares: Vec<u64> = futures::future::join_all(results).block().into_iter().map(Result::unwrap).collect();
/// assert_eq!(squares[10], 100);
/// # }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Pool").field("size", &inner.size).field("workers", &inner.workers.len()).finish()
    }
}

impl Pool {
    /// A pool of `n` workers (at least one), each a process with `resources`,
    /// started when the first task is run.
    pub fn new(n: usize, resources: Resources) -> Pool {
        Pool {
            inner: Arc::new(Mutex::new(Inner {
                size: n.max(1),
                resources,
                workers: Vec::new(),
                starting: Vec::new(),
                queue: VecDeque::new(),
                done: HashMap::new(),
                next_id: 0,
                wakers: Vec::new(),
            })),
        }
    }

    /// Runs `f` on a worker of the pool; resolves to its value.
    ///
    /// # Errors
    /// [`JobError::Panicked`] if the task panicked (its worker is replaced), and
    /// the other [`JobError`]s if its worker ended some other way.
    ///
    /// # Panics
    /// If `f` cannot be serialised.
    pub fn run<F, T>(&self, f: F) -> PoolRun<T>
    where
        F: serde_closure::traits::FnOnce<(), Output = T> + Serialize + DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        let arg = codec::encode(&f).unwrap_or_else(|e| panic!("constellation: cannot serialise a pool task: {e}"));
        let entry = spawn::task_entry(run_task::<F, T>);
        let mut inner = self.inner.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.queue.push_back(Task { id, entry, arg });
        PoolRun { pool: self.inner.clone(), id, value: PhantomData }
    }
}

impl Inner {
    /// Moves everything along as far as it goes without waiting. Returns whether
    /// anything happened.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        while self.workers.len() + self.starting.len() < self.size {
            self.starting.push(ProcessFn::new(Worker).spawn_monitored(self.resources, SpawnOptions::default()));
        }
        let mut index = 0;
        while index < self.starting.len() {
            match Pin::new(&mut self.starting[index]).poll(cx) {
                Poll::Pending => index += 1,
                Poll::Ready(result) => {
                    let mut spawn = self.starting.swap_remove(index);
                    progressed = true;
                    match result {
                        Ok(pid) => {
                            let down = spawn.monitor(pid).expect("workers are spawned monitored");
                            self.workers.push(Running {
                                pid,
                                tasks: Sender::new(pid),
                                results: Receiver::new(pid),
                                down,
                                busy: None,
                            });
                        }
                        // Nothing can run the queued tasks now: fail them, not hang.
                        Err(error) => {
                            for task in self.queue.drain(..) {
                                self.done.insert(task.id, Err(JobError::Spawn(error.clone())));
                            }
                        }
                    }
                }
            }
        }
        let mut index = 0;
        while index < self.workers.len() {
            let worker = &mut self.workers[index];
            if worker.busy.is_none() {
                if let Some(task) = self.queue.pop_front() {
                    let id = task.id;
                    match worker.tasks.try_send(task) {
                        Ok(()) => {
                            worker.busy = Some(id);
                            progressed = true;
                        }
                        Err(error) => self.queue.push_front(error.into_inner()),
                    }
                }
            }
            let worker = &mut self.workers[index];
            if let Poll::Ready(Some((id, value))) = Pin::new(&mut worker.results).poll_next(cx) {
                worker.busy = None;
                self.done.insert(id, Ok(value));
                progressed = true;
                continue;
            }
            if let Poll::Ready(down) = Pin::new(&mut worker.down).poll(cx) {
                let worker = self.workers.swap_remove(index);
                if let Some(id) = worker.busy {
                    self.done.insert(id, Err(JobError::from_status(down.status, None)));
                }
                progressed = true;
                continue;
            }
            index += 1;
        }
        progressed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for worker in &self.workers {
            crate::kill(worker.pid);
        }
    }
}

/// The future of [`Pool::run`].
#[must_use = "futures do nothing unless polled: call .block() or .await"]
pub struct PoolRun<T> {
    pool: Arc<Mutex<Inner>>,
    id: u64,
    value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for PoolRun<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolRun").field("task", &self.id).finish()
    }
}

impl<T: DeserializeOwned> Future for PoolRun<T> {
    type Output = Result<T, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.pool.lock();
        let mut progressed = false;
        while inner.drive(cx) {
            progressed = true;
        }
        let result = match inner.done.remove(&self.id) {
            Some(result) => Poll::Ready(result.and_then(|bytes| {
                codec::decode(&bytes)
                    .map_err(|e| JobError::Panicked(format!("the task's value could not be decoded: {e}")))
            })),
            None => {
                if !inner.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    inner.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        };
        // The workers' channels and monitors now wake this task only. When it
        // completes, or moved others' tasks along, the others must poll again to
        // see their results and to be the ones woken next.
        let wake = if progressed || result.is_ready() {
            let me = cx.waker();
            let mut all = std::mem::take(&mut inner.wakers);
            all.retain(|w| !w.will_wake(me));
            if result.is_pending() {
                inner.wakers.push(me.clone());
            }
            all
        } else {
            Vec::new()
        };
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
        result
    }
}
