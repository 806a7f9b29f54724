//! Operating a running supervisor through its handle, and dynamic supervisors
//! starting children on request from other processes.
mod util;
use util::Job;

#[test]
fn a_handle_lists_counts_terminates_restarts_and_deletes_children() {
    let job = Job::new("supervision", &["handle"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("children: "), "children: a:running:false nested:running:true");
    assert_eq!(job.line("count: "), "count: ChildCount { specs: 2, active: 2, supervisors: 1, workers: 1 }");
    assert_eq!(job.line("terminate: "), "terminate: Ok(())");
    assert_eq!(job.line("after terminate: "), "after terminate: a:stopped:false nested:running:true");
    assert_eq!(job.line("delete running: "), "delete running: Err(Running(\"nested\"))");
    assert_eq!(job.line("restart: "), "restart: Ok(\"a pid\")");
    assert_eq!(job.line("restart running: "), "restart running: Err(Running(\"a\"))");
    assert_eq!(job.line("terminate missing: "), "terminate missing: Err(NotFound(\"zzz\"))");
    assert_eq!(job.line("start on static: "), "start on static: Err(NotDynamic)");
    assert_eq!(job.line("delete: "), "delete: Ok(())");
    assert_eq!(job.line("after delete: "), "after delete: nested:running:true");
    assert_eq!(job.line("handle of a gone supervisor: "), "handle of a gone supervisor: Err(NoSupervisor)");
    job.assert_nothing_left();
}

#[test]
fn a_dynamic_supervisor_starts_children_for_other_processes() {
    let job = Job::new("supervision", &["dynamic"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("client started: "), "client started: 3");
    // The second child crashed and was restarted (transient): four lives in all.
    assert_eq!(job.line("lives: "), "lives: dyn 1, dyn 2, dyn 3, dyn 4");
    assert_eq!(job.line("count: "), "count: ChildCount { specs: 0, active: 0, supervisors: 0, workers: 0 }");
    job.assert_nothing_left();
}
