//! Stopping a job leaves no process behind: Ctrl-C to its process group, SIGINT
//! or SIGTERM to the bridge, or SIGKILL of the bridge.
mod util;
use std::time::Duration;
use util::Job;

fn stop_with(signal: i32, whole_group: bool) -> util::Finished {
    let running = Job::new("scenarios", &["sleepers"]).start();
    running.wait_for_stdout("ready", Duration::from_secs(30));
    running.signal(signal, whole_group);
    let job = running.finish();
    job.assert_nothing_left();
    job
}

#[test]
fn ctrl_c_to_the_process_group_stops_the_job() {
    let job = stop_with(libc::SIGINT, true);
    assert_eq!(job.code, Some(128 + libc::SIGINT));
}

#[test]
fn sigint_to_the_bridge_stops_the_job() {
    let job = stop_with(libc::SIGINT, false);
    assert_eq!(job.code, Some(128 + libc::SIGINT));
}

#[test]
fn sigterm_to_the_bridge_stops_the_job() {
    let job = stop_with(libc::SIGTERM, false);
    assert_eq!(job.code, Some(128 + libc::SIGTERM));
}

#[test]
fn sigkill_of_the_bridge_takes_every_process_with_it() {
    let job = stop_with(libc::SIGKILL, false);
    assert_eq!(job.signal, Some(libc::SIGKILL));
}
