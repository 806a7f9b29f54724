//! Channels between real processes: their transport, many peers, all-to-all, select with a timeout,
//! misuse, ended peers, delivery before exit, backpressure and type checks.
mod util;
use util::Job;

#[test]
fn ten_children_each_receive_and_send() {
    let job = Job::new("scenarios", &["ten_children"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let expected: Vec<u64> = (1..=3u64).flat_map(|round| (0..10).map(move |i| round * 10 + i)).collect();
    assert_eq!(job.line("answers: "), format!("answers: {expected:?}"));
}

#[test]
fn processes_on_one_host_talk_over_a_unix_socket() {
    // The child is spawned and sent to at once, before it runs: its Unix socket
    // must exist already.
    let job = Job::new("scenarios", &["connections"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("received: "), "received: Ok(2)");
    assert_eq!(job.line("tcp connections: "), "tcp connections: 0");
    assert_eq!(job.line("unix sockets: "), "unix sockets: some");
}

#[test]
fn all_to_all_among_ten_processes() {
    let job = Job::new("all_to_all", &["10"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("all 10"), "all 10 processes heard from all 9 others (index sum 45)");
    assert_eq!(job.exits().len(), 11);
}

#[test]
fn select_across_channels_with_a_timeout() {
    let job = Job::new("scenarios", &["select_timeout"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("first: "), "first: slow sent Ok(\"slow\")");
    assert_eq!(job.line("second: "), "second: timed out");
    assert_eq!(job.line("timeout: "), "timeout: Err(Elapsed)");
}

#[test]
fn a_second_sender_to_the_same_process_panics() {
    let job = Job::new("scenarios", &["duplicate_sender"]).run();
    assert_eq!(job.code, Some(101));
    let panic = job.exits()[&job.top()]["panic"].as_str().unwrap().to_owned();
    assert!(panic.contains("already has a Sender to"), "{panic}");
}

#[test]
fn recv_from_a_process_that_exited_without_sending_is_an_error() {
    let job = Job::new("scenarios", &["silent_child"]).run();
    assert_eq!(job.line("recv: "), "recv: Err(PeerEnded)");
    assert_eq!(job.line("again: "), "again: Err(PeerEnded)");
}

#[test]
fn messages_sent_right_before_exit_all_arrive() {
    let job = Job::new("scenarios", &["send_before_exit"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("received "), "received 100000 in order true, then PeerEnded");
}

#[test]
fn a_slow_receiver_does_not_grow_the_senders_memory() {
    let job = Job::new("scenarios", &["slow_receiver"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("received "), "received 256 MiB");
    let (_, child) = &job.spawns()[0];
    let peak = job.stdout_of(child);
    let kib: u64 = peak.trim().trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().unwrap();
    assert!(kib < 48 * 1024, "the sender's peak memory was {kib} kB for 256 MiB sent");
}

#[test]
fn small_values_get_past_a_full_socket_in_order() {
    let job = Job::new("scenarios", &["small_values_past_a_full_socket"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("received "), "received 3000000 in order true, then Err(SenderDropped)");
}

#[test]
fn a_sender_and_a_receiver_shared_by_threads_lose_and_reorder_nothing() {
    let job = Job::new("scenarios", &["shared_ends"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("received "), "received 1000000, each once true, in order true");
}

#[test]
fn a_type_mismatch_is_an_error() {
    let job = Job::new("scenarios", &["type_mismatch"]).run();
    assert_eq!(job.line("recv: "), "recv: Err(TypeMismatch { expected: \"u64\", found: \"alloc::string::String\" })");
}

#[test]
fn sender_is_a_sink_and_receiver_a_stream() {
    let job = Job::new("scenarios", &["sink_stream"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("streamed "), "streamed 100 values summing to 5050");
}

#[test]
fn a_second_receiver_from_the_same_process_panics() {
    let job = Job::new("scenarios", &["duplicate_receiver"]).run();
    assert_eq!(job.code, Some(101));
    let panic = job.exits()[&job.top()]["panic"].as_str().unwrap().to_owned();
    assert!(panic.contains("already has a Receiver from"), "{panic}");
}

#[test]
fn try_send_reports_a_full_buffer_and_a_gone_peer() {
    let job = Job::new("scenarios", &["try_send"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("full after some values: "), "full after some values: true (true)");
    assert_eq!(job.line("disconnected hands the value back: "), "disconnected hands the value back: [1]");
}

#[test]
fn values_taken_by_a_dropped_receiver_go_to_the_next_one_in_order() {
    let job = Job::new("scenarios", &["receiver_reopened"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("reopened: "), "reopened: 10000 values in order true");
    assert_eq!(job.line("after: "), "after: Err(SenderDropped)");
    assert_eq!(job.line("then: "), "then: Err(TypeMismatch { expected: \"u64\", found: \"alloc::string::String\" })");
}

#[test]
fn a_value_sent_right_before_the_end_arrives_and_then_the_end() {
    let job = Job::new("scenarios", &["value_then_end"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("ends seen: "), "ends seen: 50 of 50; together: Ok(1225)");
}

#[test]
fn a_receive_in_another_executor_after_a_blocking_one_completes() {
    let job = Job::new("scenarios", &["other_executor"]).deadline(std::time::Duration::from_secs(30)).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("other executor: "), "other executor: [10, 20, 30, 40, 50, 60]");
    job.assert_nothing_left();
}

#[test]
fn byte_vectors_of_every_size_arrive_whole_and_in_order() {
    let job = Job::new("scenarios", &["byte_vectors"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("intact: "), "intact: 200 of 200; then Err(SenderDropped)");
}
