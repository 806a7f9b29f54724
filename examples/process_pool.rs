//! A pool of worker processes fed jobs over channels.
//!
//! Four workers each receive jobs (numbers to square) from the top process and
//! send the results back; the top process hands out 40 jobs round-robin and sums
//! what comes back.
use constellation::*;

const WORKERS: usize = 4;
const JOBS: u64 = 40;

fn main() {
    init(Resources::default());
    let workers: Vec<Pid> = (0..WORKERS)
        .map(|_| {
            spawn(
                Resources { mem: 20 * Mem::MIB, ..Resources::default() },
                FnOnce!(|parent: Pid| {
                    let jobs = Receiver::<Option<u64>>::new(parent);
                    let results = Sender::<u64>::new(parent);
                    let mut done = 0;
                    while let Some(job) = jobs.recv().block().expect("the pool's owner ended") {
                        results.send(job * job).block();
                        done += 1;
                    }
                    println!("worker {} did {done} jobs", pid());
                }),
            )
            .block()
            .expect("spawn failed")
        })
        .collect();
    let senders: Vec<_> = workers.iter().map(|&w| Sender::<Option<u64>>::new(w)).collect();
    let receivers: Vec<_> = workers.iter().map(|&w| Receiver::<u64>::new(w)).collect();
    for job in 0..JOBS {
        senders[job as usize % WORKERS].send(Some(job)).block();
    }
    for sender in &senders {
        sender.send(None).block();
    }
    let mut total = 0;
    for job in 0..JOBS {
        total += receivers[job as usize % WORKERS].recv().block().expect("a worker died");
    }
    let expected: u64 = (0..JOBS).map(|j| j * j).sum();
    println!("sum of squares of 0..{JOBS} = {total} (expected {expected})");
    assert_eq!(total, expected);
}
