//! `shutdown`: SIGTERM runs `on_shutdown` hooks; a process that does not end in
//! time is killed. Either way its status names who shut it down.
mod util;
use util::Job;

#[test]
fn shutdown_runs_hooks_and_kills_after_the_timeout() {
    let job = Job::new("scenarios", &["shutdown"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let top = job.top();
    let spawns = job.spawns();
    let (polite, stubborn) = (&spawns[0].1, &spawns[1].1);
    assert_eq!(job.stdout_of(polite), "cleaning up\n");
    assert_eq!(job.line("polite: "), format!("polite: killed by link to {top}"));
    assert_eq!(job.stdout_of(stubborn), "ignoring the shutdown\n");
    assert_eq!(job.line("stubborn: "), format!("stubborn: killed by link to {top}"));
    assert_eq!(job.exits()[stubborn]["killed_by"], top.as_str());
    job.assert_nothing_left();
}
