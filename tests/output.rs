//! Output is carried exactly: any bytes, on the stream they were written to; and
//! the top process reads the job's stdin.
mod util;
use util::Job;

#[test]
fn what_a_process_prints_before_a_spawn_comes_before_what_the_child_prints() {
    let job = Job::new("scenarios", &["output_order"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let text = job.all_stdout();
    for round in 0..30 {
        let before = text.find(&format!("before {round} ")).expect("the parent's line");
        let child = text.find(&format!("child {round}\n")).expect("the child's line");
        assert!(before < child, "round {round}: the child's line came first");
    }
    job.assert_nothing_left();
}

#[test]
fn all_256_byte_values_are_preserved_in_json() {
    let job = Job::new("scenarios", &["binary_output"]).run();
    let top = job.top();
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(job.output(&top, 1), all);
    assert_eq!(job.output(&top, 2), all);
}

#[test]
fn all_256_byte_values_are_preserved_on_stdout_in_human_format() {
    let job = Job::new("scenarios", &["binary_output"]).human().run();
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(job.stdout, all, "stdout carries exactly the bytes written");
    // stderr has the bridge's header and indents around the same bytes.
    let stderr = &job.stderr;
    assert!(stderr.len() > 256 + "fea39f8:\n".len());
    assert!(stderr.windows(10).any(|w| w == &all[246..]), "the bytes are on stderr too");
}

#[test]
fn stdin_reaches_the_top_process() {
    let job = Job::new("scenarios", &["stdin_echo"]).stdin(b"one\ntwo\n").run();
    assert_eq!(job.code, Some(0));
    assert_eq!(job.stdout_of(&job.top()), "ONE\nTWO\nend of input\n");
}

#[test]
fn output_events_mark_closed_streams() {
    let job = Job::new("hello", &[]).run();
    let top = job.top();
    let closes = job
        .events
        .iter()
        .filter(|e| e["event"] == "output" && e["pid"] == top.as_str() && e["data"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(closes, 2, "one empty output event per closed fd");
}

#[test]
fn a_spawned_processs_unterminated_last_line_is_printed_whether_it_returns_or_panics() {
    let job = Job::new("scenarios", &["unterminated_output"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let pids = job.stdout_of(&job.top());
    let (returns, panics) = pids.trim().split_once(' ').expect("the two children's pids");
    assert_eq!(job.stdout_of(returns), "returns without a newline");
    assert_eq!(job.stdout_of(panics), "panics without a newline");
    let exits = job.exits();
    assert_eq!(exits[returns]["code"], 0);
    assert_eq!(exits[panics]["code"], 101, "a panic ends a process with Rust's code for it");
    assert_eq!(exits[panics]["panic"], "boom");
    job.assert_nothing_left();
}
