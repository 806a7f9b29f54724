//! A dynamic supervisor starting workers on request, from another process.
//!
//! The top process starts a `DynamicSupervisor` registered as "pool", then a
//! client process (which has never met the workers) asks it for five workers
//! through a `SupervisorHandle`. Each worker squares a number and reports to the
//! top process's mailbox; worker 3 crashes in its first life and is restarted.
use constellation::*;
use constellation_supervisor::*;
use futures::{FutureExt, StreamExt};
use std::time::Duration;

fn small() -> Resources {
    Resources { mem: 30 * Mem::MIB, ..Resources::default() }
}

/// Asks the top process which job this worker does, and in which life.
fn worker() {
    let answers = Mailbox::<(u64, u32)>::open("job");
    Sender::<()>::to_registered("top", "hello").send(()).block();
    let (_, (n, life)) = answers.recv().block().expect("the top process answers");
    if n == 3 && life == 1 {
        panic!("worker for {n} crashed in its first life");
    }
    Sender::<(u64, u64)>::to_registered("top", "results").send((n, n * n)).block();
}

fn main() {
    init(Resources::default());
    register("top").expect("registering the top process");
    let hello = Mailbox::<()>::open("hello");
    let results = Mailbox::<(u64, u64)>::open("results");

    let template = Child::new("square", small(), Fn!(|_sup: Pid| worker())).restart(Restart::Transient);
    let pool = DynamicSupervisor::new(template)
        .intensity(3, Duration::from_secs(10))
        .spawn(small())
        .block()
        .expect("starting the pool");

    // A client that starts the workers through the pool's handle.
    spawn(
        small(),
        FnOnce!(move |_parent: Pid| {
            let handle = SupervisorHandle::new(pool);
            for _ in 0..5 {
                let pid = handle.start_child().expect("starting a worker");
                println!("client started worker {pid}");
            }
        }),
    )
    .block()
    .expect("starting the client");

    // Hand out jobs 1..=5 as workers ask; watch each worker, and hand the job of
    // one that crashed to the next that asks (its restarted incarnation).
    let mut queue: std::collections::VecDeque<u64> = (1..=5).collect();
    let mut lives = std::collections::HashMap::<u64, u32>::new();
    let mut watching = futures::stream::FuturesUnordered::new();
    let mut squares = Vec::new();
    while squares.len() < 5 {
        enum Event {
            Hello(Pid),
            Result(u64, u64),
            Down(u64, Down),
        }
        let event = async {
            futures::select! {
                asked = hello.recv().fuse() => Event::Hello(asked.expect("hello").0),
                done = results.recv().fuse() => { let (n, square) = done.expect("a result").1; Event::Result(n, square) }
                down = watching.select_next_some() => { let (job, down) = down; Event::Down(job, down) }
            }
        }
        .block();
        match event {
            Event::Hello(worker) => {
                let job = queue.pop_front().expect("a job for every worker");
                let life = lives.entry(job).or_insert(0);
                *life += 1;
                let down = monitor(worker);
                watching.push(async move { (job, down.await) });
                Sender::<(u64, u32)>::to_mailbox(worker, "job").send((job, *life)).block();
            }
            Event::Result(n, square) => squares.push((n, square)),
            Event::Down(job, down) if !down.status.success() => {
                println!("the worker for {job} ended ({}); its job goes to the next worker", down.status);
                queue.push_back(job);
            }
            Event::Down(..) => {}
        }
    }
    squares.sort();
    println!("squares: {squares:?}");
    let handle = SupervisorHandle::new(pool);
    println!("children still running: {}", handle.count_children().expect("counting").active);
    shutdown(pool, Duration::from_secs(10));
}
