//! Jobs, fan-outs and pools on one machine: values and panics come back, order
//! is kept, the concurrency bound holds, memory and CPU-time limits are reported.
mod util;
use util::Job;

#[test]
fn job_values_errors_and_limits() {
    let job = Job::new("scenarios", &["jobs"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("value: "), "value: Ok(42)");
    assert_eq!(job.line("panic: "), "panic: Err(Panicked(\"no answer\"))");
    let memory = job.line("memory: ");
    // A cgroup stops it and says so; under RLIMIT_DATA the allocation fails and it aborts.
    assert!(memory == "memory: Err(MemoryExceeded(50 MiB))" || memory == "memory: Err(Killed(Signal(6)))", "{memory}");
    assert_eq!(job.line("cpu: "), "cpu: Err(CpuTimeExceeded(1s))");
    assert_eq!(job.line("try_get first: "), "try_get first: None");
    assert_eq!(job.line("try_get later: "), "try_get later: Ok(Ok(5))");
    assert_eq!(job.line("aborted: "), "aborted: killed by signal 9");
    job.assert_nothing_left();
}

#[test]
fn fanout_keeps_order_reports_panics_and_bounds_concurrency() {
    let job = Job::new("scenarios", &["fanout"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(
        job.line("values: "),
        "values: 0,2,4,6,8,10,12,14,16,18,20,22,24,the job panicked: unlucky 13,28,30,32,34,36,38"
    );
    assert_eq!(job.line("over 3: "), "over 3: false");
    assert_eq!(job.line("plain: "), "plain: [Ok(101), Ok(102), Ok(103)]");
    assert_eq!(job.spawns().len(), 23);
    job.assert_nothing_left();
}

#[test]
fn a_pool_replaces_a_worker_whose_task_panicked() {
    let job = Job::new("pool", &[]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("99 tasks"), "99 tasks succeeded, summing to 326586");
    assert_eq!(job.line("task 42: "), "task 42: the job panicked: task 42 does not like its number");
    assert_eq!(job.line("afterwards: "), "afterwards: Ok(\"still here\")");
    // Four workers, and one replacement for the worker that died.
    assert_eq!(job.spawns().len(), 5);
    job.assert_nothing_left();
}

#[test]
fn the_job_examples_print_their_results() {
    let job = Job::new("pythagorean", &["5", "12"]).run();
    assert_eq!(job.line("hypotenuse"), "hypotenuse of 5 and 12 = 13");
    let job = Job::new("fanout", &[]).run();
    assert_eq!(job.line("of 1..=1000"), "of 1..=1000, 871 takes the most Collatz steps: 178");
    assert_eq!(job.spawns().len(), 1000);
}

#[test]
fn a_job_dropped_while_starting_does_not_outlive_it() {
    let job = Job::new("scenarios", &["drop_starting_job"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("dropped"), "dropped");
    let (_, sleeper) = &job.spawns()[0];
    assert_eq!(job.exits()[sleeper]["signal"], libc::SIGKILL);
    job.assert_nothing_left();
}
