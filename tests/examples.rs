//! Every example runs to its end with the output its doc promises.
mod util;
use util::Job;

fn run(name: &str, args: &[&str]) -> util::Finished {
    let job = Job::new(name, args).run();
    assert_eq!(job.code, Some(0), "{name}: {}", job.stderr_text());
    job.assert_nothing_left();
    job
}

#[test]
fn process_pool() {
    let job = run("process_pool", &[]);
    assert_eq!(job.line("sum of squares"), "sum of squares of 0..40 = 20540 (expected 20540)");
    assert_eq!(job.all_stdout().matches(" did 10 jobs").count(), 4);
}

#[test]
fn fork_join() {
    let job = run("fork_join", &["4"]);
    assert_eq!(job.line("sum of"), "sum of 1..=10000000 over 4 processes = 50000005000000");
}

#[test]
fn supervisor_tree() {
    let job = run("supervisor_tree", &[]);
    assert_eq!(job.line("counter-1 counted"), "counter-1 counted 10, counter-2 counted 14 (including lives cut short)");
    assert_eq!(
        job.actions_of("counter-2"),
        ["started", "exited", "restarting", "started", "exited", "restarting", "started", "exited"]
    );
}

#[test]
fn dynamic_pool() {
    let job = run("dynamic_pool", &[]);
    assert_eq!(job.line("squares: "), "squares: [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]");
    assert!(job.all_stdout().contains("the worker for 3 ended (panicked: worker for 3 crashed in its first life)"));
}

#[test]
fn pipeline() {
    let job = run("pipeline", &[]);
    assert_eq!(job.line("sum of squares"), "sum of squares of 1..=1000 = 333833500");
}
