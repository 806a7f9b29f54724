//! Jobs: run a closure in a new process and get its value back ([`job`]), map a
//! closure over many inputs in parallel processes ([`fanout`], [`Fanout`]), and a
//! pool of reusable worker processes for many small tasks ([`Pool`]).
//!
//! A job's process is monitored from its start, so its end is always reported:
//! a value, or a [`JobError`] saying how it ended instead (with the panic message).
//! Memory is limited as for any process (`Resources::mem`); CPU time can be
//! limited too (`cpu_time`, enforced with `RLIMIT_CPU`).

use crate::{
    spawn::SpawnOptions, sys, ExitStatus, Mem, Monitor, Pid, Placement, ProcessFn, Receiver, Resources, Sender, Spawn,
    SpawnError,
};
use futures::{stream::FuturesUnordered, Stream, StreamExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// How a job ended without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    /// The job's closure panicked with this message.
    Panicked(String),
    /// The job's process was ended some other way: by a signal, a link, an
    /// `abort`, or an exit with this status before the value was sent.
    Killed(ExitStatus),
    /// The job's node, or the connection to it, was lost.
    Lost,
    /// The job used more memory than its `Resources` allow.
    MemoryExceeded(Mem),
    /// The job used more processor time than its `cpu_time` limit.
    CpuTimeExceeded(Duration),
    /// The job's process could not be started.
    Spawn(SpawnError),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Panicked(message) => write!(f, "the job panicked: {message}"),
            JobError::Killed(status) => write!(f, "the job's process ended without a value: {status}"),
            JobError::Lost => f.write_str("the job was lost with its node"),
            JobError::MemoryExceeded(limit) => write!(f, "the job exceeded its memory limit of {limit}"),
            JobError::CpuTimeExceeded(limit) => write!(f, "the job exceeded its CPU time limit of {limit:?}"),
            JobError::Spawn(error) => write!(f, "the job could not start: {error}"),
        }
    }
}

impl std::error::Error for JobError {}

impl JobError {
    pub(crate) fn from_status(status: ExitStatus, cpu_time: Option<Duration>) -> JobError {
        match status {
            ExitStatus::Panicked(message) => JobError::Panicked(message),
            ExitStatus::Lost => JobError::Lost,
            ExitStatus::MemoryExceeded(limit) => JobError::MemoryExceeded(limit),
            ExitStatus::Signal(libc::SIGXCPU) if cpu_time.is_some() => {
                JobError::CpuTimeExceeded(cpu_time.expect("checked"))
            }
            other => JobError::Killed(other),
        }
    }
}

/// What runs in a job's process: the closure, then its value sent back.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: Serialize + DeserializeOwned")]
struct JobBody<F, T> {
    f: F,
    cpu_time: Option<Duration>,
    #[serde(skip)]
    value: PhantomData<fn() -> T>,
}

impl<F, T> serde_closure::traits::FnOnce<(Pid,)> for JobBody<F, T>
where
    F: serde_closure::traits::FnOnce<(), Output = T>,
    T: Serialize,
{
    type Output = ();
    fn call_once(self, (parent,): (Pid,)) {
        if let Some(limit) = self.cpu_time {
            if let Err(error) = sys::limit_cpu_time(limit) {
                panic!("constellation: cannot limit the job's CPU time: {error}");
            }
        }
        let value = self.f.call_once(());
        Sender::<T>::new(parent).send(value).block();
    }
}

/// A job running in its own process: a future of its value.
///
/// Dropping it (or [`abort`](Job::abort)) ends the process if it still runs.
#[must_use = "a job does nothing unless polled: call .block() or .await"]
pub struct Job<T: Serialize + DeserializeOwned> {
    state: State<T>,
    cpu_time: Option<Duration>,
}

enum State<T: Serialize + DeserializeOwned> {
    /// Not polled yet: limits may still be set.
    Ready(Box<dyn FnOnce(Option<Duration>) -> Spawn>),
    Starting(Spawn),
    Running {
        pid: Pid,
        values: Receiver<T>,
        down: Monitor,
    },
    Done,
}

impl<T: Serialize + DeserializeOwned> fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = match &self.state {
            State::Running { pid, .. } => Some(*pid),
            _ => None,
        };
        f.debug_struct("Job").field("pid", &pid).finish()
    }
}

/// Runs `f` in a new process with `resources`; the [`Job`] resolves to its value.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let square = job(Resources::default(), FnOnce!(move || 7 * 7)).block();
/// assert_eq!(square, Ok(49));
/// # }
/// ```
///
/// # Panics
/// If [`init`](crate::init) has not been called, or `f` cannot be serialised.
pub fn job<F, T>(resources: Resources, f: F) -> Job<T>
where
    F: serde_closure::traits::FnOnce<(), Output = T> + Serialize + DeserializeOwned + 'static,
    T: Serialize + DeserializeOwned + 'static,
{
    Job::start(resources, f, None, Placement::default())
}

impl<T: Serialize + DeserializeOwned + 'static> Job<T> {
    fn start<F>(resources: Resources, f: F, cpu_time: Option<Duration>, placement: Placement) -> Job<T>
    where
        F: serde_closure::traits::FnOnce<(), Output = T> + Serialize + DeserializeOwned + 'static,
    {
        let start = move |cpu_time| {
            let body = JobBody { f, cpu_time, value: PhantomData };
            let options = SpawnOptions { placement, ..SpawnOptions::default() };
            let mut spawn = ProcessFn::new(body).spawn_monitored(resources, options);
            spawn.kill_if_dropped = true;
            spawn
        };
        Job { state: State::Ready(Box::new(start)), cpu_time }
    }

    /// Limits the job's CPU time (in whole seconds, at least one); past it the
    /// result is [`JobError::CpuTimeExceeded`].
    ///
    /// # Panics
    /// If the job was already polled.
    pub fn cpu_time(mut self, limit: Duration) -> Job<T> {
        assert!(matches!(self.state, State::Ready(_)), "constellation: set a job's limits before polling it");
        self.cpu_time = Some(limit);
        self
    }

    /// The job's process, once started.
    pub fn pid(&self) -> Option<Pid> {
        match &self.state {
            State::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// The job's result if it is there, without waiting.
    pub fn try_get(&mut self) -> Option<Result<T, JobError>> {
        let waker = futures::task::noop_waker();
        match Pin::new(self).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    /// Ends the job's process now, if it still runs.
    pub fn abort(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let State::Running { pid, .. } = std::mem::replace(&mut self.state, State::Done) {
            crate::kill(pid);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Drop for Job<T> {
    fn drop(&mut self) {
        if let State::Running { pid, .. } = &self.state {
            crate::kill(*pid);
        }
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Future for Job<T> {
    type Output = Result<T, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Ready(_) => {
                    let State::Ready(start) = std::mem::replace(&mut this.state, State::Done) else { unreachable!() };
                    this.state = State::Starting(start(this.cpu_time));
                }
                State::Starting(spawn) => match Pin::new(&mut *spawn).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => {
                        this.state = State::Done;
                        // Lost while it started is lost all the same: a fan-out retries it.
                        let error = if error == SpawnError::Lost { JobError::Lost } else { JobError::Spawn(error) };
                        return Poll::Ready(Err(error));
                    }
                    Poll::Ready(Ok(pid)) => {
                        let down = spawn.monitor(pid).expect("jobs are spawned monitored");
                        this.state = State::Running { pid, values: Receiver::new(pid), down };
                    }
                },
                State::Running { values, down, .. } => {
                    // The value, if it came, wins over the end of the process.
                    match Pin::new(&mut *values).poll_next(cx) {
                        Poll::Ready(Some(value)) => {
                            this.state = State::Done;
                            return Poll::Ready(Ok(value));
                        }
                        Poll::Ready(None) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                    return match Pin::new(down).poll(cx) {
                        Poll::Ready(down) => {
                            this.state = State::Done;
                            Poll::Ready(Err(JobError::from_status(down.status, this.cpu_time)))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Done => panic!("constellation: a Job was polled after it completed"),
            }
        }
    }
}

/// A map of a closure over many inputs, each in its own process.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let squares = Fanout::new(Resources::default(), Fn!(|x: u64| x * x))
///     .concurrency(8)
///     .run((1..=100).collect())
///     .block();
/// assert_eq!(squares[9], Ok(100));
/// # }
/// ```
#[derive(Debug)]
pub struct Fanout<F> {
    resources: Resources,
    f: F,
    concurrency: Option<usize>,
    retries: u32,
    cpu_time: Option<Duration>,
    placement: Placement,
}

/// What a fan-out process runs: the closure on one input.
#[derive(Serialize, Deserialize)]
#[serde(bound = "F: Serialize + DeserializeOwned, I: Serialize + DeserializeOwned")]
struct Apply<F, I> {
    f: F,
    input: I,
}

impl<F, I, T> serde_closure::traits::FnOnce<()> for Apply<F, I>
where
    F: serde_closure::traits::Fn<(I,), Output = T>,
{
    type Output = T;
    fn call_once(self, (): ()) -> T {
        self.f.call((self.input,))
    }
}

impl<F> Fanout<F> {
    /// A fan-out of `f` over inputs, each run with `resources`.
    pub fn new(resources: Resources, f: F) -> Fanout<F> {
        Fanout { resources, f, concurrency: None, retries: 0, cpu_time: None, placement: Placement::default() }
    }

    /// Runs at most `n` processes at once (by default, as many as the job's
    /// machines hold when the fan-out starts: on each, its free memory over
    /// `resources.mem` and its cores over `resources.cpu`, whichever is less).
    pub fn concurrency(mut self, n: usize) -> Fanout<F> {
        self.concurrency = Some(n.max(1));
        self
    }

    /// Runs an input again, up to `n` times, when its process was lost with its
    /// node, so a node failure costs time, not results.
    pub fn retries(mut self, n: u32) -> Fanout<F> {
        self.retries = n;
        self
    }

    /// How a cluster's master spreads the processes over its nodes (by default
    /// [`Placement::LeastLoaded`]; [`Placement::RoundRobin`] takes the nodes in
    /// turn).
    pub fn placement(mut self, placement: Placement) -> Fanout<F> {
        self.placement = placement;
        self
    }

    /// Limits each process's CPU time (in whole seconds, at least one); past it
    /// the input's result is [`JobError::CpuTimeExceeded`].
    pub fn cpu_time(mut self, limit: Duration) -> Fanout<F> {
        self.cpu_time = Some(limit);
        self
    }

    /// Runs `f` on every input; resolves to the results in input order.
    pub fn run<I, T>(self, inputs: Vec<I>) -> impl Future<Output = Vec<Result<T, JobError>>>
    where
        F: serde_closure::traits::Fn<(I,), Output = T> + Clone + Serialize + DeserializeOwned + 'static,
        I: Clone + Serialize + DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        let concurrency = self.concurrency.unwrap_or_else(|| capacity(self.resources).clamp(1, 4096));
        async move {
            let mut results: Vec<Option<Result<T, JobError>>> = inputs.iter().map(|_| None).collect();
            let mut queue: VecDeque<(usize, I, u32)> = inputs.into_iter().enumerate().map(|(i, x)| (i, x, 0)).collect();
            let mut running = FuturesUnordered::new();
            loop {
                while running.len() < concurrency {
                    let Some((index, input, attempt)) = queue.pop_front() else { break };
                    let apply = Apply { f: self.f.clone(), input: input.clone() };
                    let job = Job::start(self.resources, apply, self.cpu_time, self.placement);
                    running.push(async move { (index, input, attempt, job.await) });
                }
                match running.next().await {
                    Some((index, input, attempt, Err(JobError::Lost))) if attempt < self.retries => {
                        queue.push_back((index, input, attempt + 1));
                    }
                    Some((index, _, _, result)) => results[index] = Some(result),
                    None => break,
                }
            }
            results.into_iter().map(|r| r.expect("every input ran")).collect()
        }
    }
}

/// Runs `f` on every input, each in its own process, as many at once as this
/// machine holds; resolves to the results in input order. See [`Fanout`] for
/// the options.
pub fn fanout<I, F, T>(resources: Resources, inputs: Vec<I>, f: F) -> impl Future<Output = Vec<Result<T, JobError>>>
where
    F: serde_closure::traits::Fn<(I,), Output = T> + Clone + Serialize + DeserializeOwned + 'static,
    I: Clone + Serialize + DeserializeOwned + 'static,
    T: Serialize + DeserializeOwned + 'static,
{
    Fanout::new(resources, f).run(inputs)
}

/// How many more processes of `resources` the job's machines hold now: this
/// machine under `cargo run`; on a cluster, every node, each by its free memory
/// over `resources.mem` or its cores over `resources.cpu`, whichever is less.
///
/// [`Fanout`] runs this many processes at once unless told otherwise.
///
/// ```no_run
/// # use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// let workers = capacity(Resources { mem: Mem::GIB, ..Resources::default() });
/// println!("room for {workers} workers of 1 GiB");
/// # }
/// ```
///
/// # Panics
/// If [`init`](crate::init) has not been called.
pub fn capacity(resources: Resources) -> usize {
    match crate::otp::call_blocking(|id| crate::proto::Request::Capacity { id, resources }) {
        Some(crate::proto::Reply::Capacity { count, .. }) => count as usize,
        _ => local_capacity(&resources),
    }
}

/// How many processes of `resources` this machine holds at once.
pub(crate) fn local_capacity(resources: &Resources) -> usize {
    let by_memory = sys::physical_memory() / resources.mem.bytes().max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let by_cpu = (cores / resources.cpu.cores().max(1.0 / 1024.0)) as u64;
    by_memory.min(by_cpu) as usize
}
