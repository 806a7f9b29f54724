//! Scale: a thousand processes alive at once, and ten thousand spawned one after
//! another without leaking fds, ports (sockets are fds) or zombies.
mod util;
use std::time::Duration;
use util::Job;

#[test]
fn a_thousand_processes_alive_at_once() {
    let job = Job::new("scenarios", &["many_alive", "1000"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("1000 alive"), "1000 alive at once");
    assert_eq!(job.exits().len(), 1001);
    job.assert_nothing_left();
}

#[test]
fn ten_thousand_sequential_spawns_leak_nothing() {
    // About 5 ms a spawn unoptimised, alone; more beside other tests.
    let job = Job::new("scenarios", &["sequential", "10000"]).deadline(Duration::from_secs(300)).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("10000 spawned"), "10000 spawned one after another");
    assert_eq!(job.line("fds of this process"), "fds of this process grew by 0");
    assert_eq!(job.line("fds of the bridge"), "fds of the bridge grew by 0");
    assert_eq!(job.line("zombies"), "zombies of the bridge: 0");
    job.assert_nothing_left();
}
