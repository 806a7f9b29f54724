//! Supervision trees the end-to-end tests run, one per scenario named by the first
//! argument. Children tell the top process what they do through its "events"
//! mailbox; each counts its incarnations in a file, so a child can crash on its
//! first life only. See `tests/supervisor_*.rs`.
use constellation::*;
use constellation_supervisor::*;
use std::{path::PathBuf, time::Duration};

fn small() -> Resources {
    Resources { mem: 30 * Mem::MIB, ..Resources::default() }
}

/// A directory private to this run of the job, named by the top process (its
/// environment is inherited by every process it spawns, and theirs by theirs).
fn run_dir() -> PathBuf {
    PathBuf::from(std::env::var("SUPERVISION_RUN_DIR").expect("set by the top process"))
}

/// Counts the incarnations of child `name`: 1 for its first life. Atomic across
/// processes: each life claims the first number whose marker file it can create.
fn incarnation(name: &str) -> u32 {
    (1..)
        .find(|life| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(run_dir().join(format!("{name}.{life}")))
                .is_ok()
        })
        .expect("a free number")
}

/// Tells the top process.
fn event(text: String) {
    Sender::<String>::to_registered("top", "events").send(text).block();
}

/// Waits until child `name` has told of its first life (its event is sent:
/// one that is killed from then on has been heard of all the same).
fn wait_for_life(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !run_dir().join(format!("{name}.1.told")).exists() {
        assert!(std::time::Instant::now() < deadline, "{name} never told of its first life");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child that announces itself, crashes on its first life if `crash_first`
/// ("b" once its siblings "a" and "c" have told of their lives, so the
/// strategies' effects show on every sibling), exits with `code` if given, and otherwise waits to be stopped.
fn worker(name: String, crash_first: bool, code: Option<i32>) {
    let life = incarnation(&name);
    event(format!("{name} {life}"));
    std::fs::write(run_dir().join(format!("{name}.{life}.told")), b"").expect("marking the event told");
    if crash_first && life == 1 {
        if name == "b" {
            // Its siblings' first lives are all heard of before the crash ends
            // them (a child killed between its start and its event would not be).
            wait_for_life("a");
            wait_for_life("c");
        }
        panic!("{name} crashed");
    }
    if let Some(code) = code {
        std::process::exit(code);
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn child(name: &str, crash_first: bool) -> Child {
    let owned = name.to_owned();
    Child::new(name, small(), FnOnce!(move |_sup: Pid| worker(owned, crash_first, None)))
        .shutdown(Shutdown::Timeout(Duration::from_secs(5)))
}

fn exiting(name: &str, crash_first: bool, code: i32) -> Child {
    let owned = name.to_owned();
    Child::new(name, small(), FnOnce!(move |_sup: Pid| worker(owned, crash_first, Some(code))))
}

/// Waits until `count` events came, printing each.
fn expect_events(events: &Mailbox<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let (_, text) = timeout(Duration::from_secs(30), events.recv())
                .block()
                .expect("an expected event did not come within 30 s")
                .expect("the events mailbox failed");
            println!("event: {text}");
            text
        })
        .collect()
}

/// Shuts the supervisor down and prints how it ended.
fn stop(supervisor: Pid) {
    let down = monitor(supervisor);
    shutdown(supervisor, Duration::from_secs(20));
    println!("supervisor: {}", down.block().status);
}

fn main() {
    init(Resources::default());
    // Named by the pid and the time: pids wrap (32768 on the development
    // machine, past which a test run goes), and a failed run leaves its
    // directory behind, whose markers would give a later run's children the
    // wrong lives. Made with create_dir, so a clash fails loudly.
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "constellation-supervision-{}-{}",
        std::process::id(),
        since_epoch.as_nanos()
    ));
    std::env::set_var("SUPERVISION_RUN_DIR", &dir);
    std::fs::create_dir(run_dir()).expect("making the run directory");
    register("top").expect("registering the top process");
    let events = Mailbox::<String>::open("events");
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let sup = |s: Supervisor| s.spawn(small()).block().expect("spawning the supervisor");
    match scenario.as_str() {
        "one_for_one" | "one_for_all" | "rest_for_one" => {
            let strategy = match scenario.as_str() {
                "one_for_one" => OneForOne,
                "one_for_all" => OneForAll,
                _ => RestForOne,
            };
            let supervisor = sup(Supervisor::new(strategy)
                .intensity(5, Duration::from_secs(10))
                .child(child("a", false))
                .child(child("b", true))
                .child(child("c", false)));
            // a 1, b 1, c 1, then the restarts the strategy calls for.
            let extra = match strategy {
                OneForOne => 1,
                OneForAll => 3,
                RestForOne => 2,
            };
            let mut seen = expect_events(&events, 3 + extra);
            seen.sort();
            println!("lives: {}", seen.join(", "));
            stop(supervisor);
        }
        "restart_types" => {
            let supervisor = sup(Supervisor::new(OneForOne)
                .intensity(10, Duration::from_secs(10))
                .child(exiting("transient_ok", false, 0).restart(Restart::Transient))
                .child(exiting("transient_bad", true, 0).restart(Restart::Transient))
                .child(exiting("temporary_bad", true, 0).restart(Restart::Temporary))
                .child(child("permanent_ok", false).restart(Restart::Permanent)));
            let mut seen = expect_events(&events, 5);
            seen.sort();
            println!("lives: {}", seen.join(", "));
            // A child's last event comes before its end: stop only once the
            // supervisor has seen both ends (the temporary child is gone from
            // its list, the transient one has no process).
            let handle = SupervisorHandle::new(supervisor);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !handle.which_children().expect("the supervisor answers while it runs").iter().all(|c| {
                match c.name.as_str() {
                    "temporary_bad" | "transient_ok" => c.pid.is_none(),
                    _ => true,
                }
            }) {
                assert!(std::time::Instant::now() < deadline, "the supervisor never saw the ends");
                std::thread::sleep(Duration::from_millis(5));
            }
            stop(supervisor);
        }
        "permanent_normal_exit" => {
            // A permanent child restarts even after exit code 0, until the intensity is spent.
            let supervisor =
                sup(Supervisor::new(OneForOne).intensity(2, Duration::from_secs(30)).child(exiting("once", false, 0)));
            let down = monitor(supervisor);
            let seen = expect_events(&events, 3);
            println!("lives: {}", seen.join(", "));
            println!("supervisor: {}", down.block().status);
        }
        "escalation" => {
            let inner = Supervisor::new(OneForOne).intensity(1, Duration::from_secs(30)).child(Child::new(
                "crasher",
                small(),
                FnOnce!(|_sup: Pid| {
                    let life = incarnation("crasher");
                    event(format!("crasher {life}"));
                    panic!("crasher always crashes");
                }),
            ));
            let outer = sup(Supervisor::new(OneForOne)
                .intensity(1, Duration::from_secs(30))
                .child(Child::supervisor("inner", inner)));
            let down = monitor(outer);
            // inner gives up after 2 crasher lives; outer restarts it once; then it gives up too.
            expect_events(&events, 4);
            println!("outer: {}", down.block().status);
        }
        "shutdown_timeout" => {
            let supervisor = sup(Supervisor::new(OneForOne)
                .child(
                    Child::new(
                        "polite",
                        small(),
                        FnOnce!(|_sup: Pid| {
                            on_shutdown(|| println!("polite cleans up"));
                            event("polite 1".to_string());
                            loop {
                                std::thread::sleep(Duration::from_secs(60));
                            }
                        }),
                    )
                    .shutdown(Shutdown::Timeout(Duration::from_secs(20))),
                )
                .child(
                    Child::new(
                        "stubborn",
                        small(),
                        FnOnce!(|_sup: Pid| {
                            on_shutdown(|| {
                                println!("stubborn ignores the shutdown");
                                loop {
                                    std::thread::sleep(Duration::from_secs(60));
                                }
                            });
                            event("stubborn 1".to_string());
                            loop {
                                std::thread::sleep(Duration::from_secs(60));
                            }
                        }),
                    )
                    .shutdown(Shutdown::Timeout(Duration::from_millis(300))),
                ));
            expect_events(&events, 2);
            stop(supervisor);
        }
        "kill_supervisor" => {
            let inner = Supervisor::new(OneForOne).child(child("leaf", false));
            let supervisor = sup(Supervisor::new(OneForOne)
                .child(Child::new(
                    "trapper",
                    small(),
                    FnOnce!(|_sup: Pid| {
                        trap_exits(true);
                        event("trapper 1".to_string());
                        loop {
                            std::thread::sleep(Duration::from_secs(60));
                        }
                    }),
                ))
                .child(Child::supervisor("inner", inner)));
            expect_events(&events, 2);
            let down = monitor(supervisor);
            kill(supervisor);
            println!("supervisor: {}", down.block().status);
        }
        "registered_child" => {
            let supervisor = sup(Supervisor::new(OneForOne)
                .intensity(3, Duration::from_secs(10))
                .child(child("named", true).register("worker")));
            expect_events(&events, 2);
            // The event comes from the new incarnation, which holds the name from its start.
            let holder = whereis("worker").expect("the restarted child holds its name");
            println!("whereis: found");
            let down = monitor(holder);
            stop(supervisor);
            println!("worker: {}", down.block().status);
            println!("after: {:?}", whereis("worker"));
        }
        "start_failure" => {
            // The second child's name is taken (by this process): the supervisor's
            // start fails, stopping the first child.
            let supervisor = sup(Supervisor::new(OneForOne)
                .child(child("first", false))
                .child(child("second", false).register("top")));
            let down = monitor(supervisor);
            println!("supervisor: {}", down.block().status);
        }
        "handle" => {
            let supervisor = sup(Supervisor::new(OneForOne)
                .register("tree")
                .child(child("a", false))
                .child(Child::supervisor("nested", Supervisor::new(OneForOne).child(child("leaf", false)))));
            expect_events(&events, 2);
            let handle = SupervisorHandle::registered("tree");
            let names = |h: &SupervisorHandle| {
                h.which_children()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        format!("{}:{}:{}", c.name, if c.pid.is_some() { "running" } else { "stopped" }, c.supervisor)
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!("children: {}", names(&handle));
            println!("count: {:?}", handle.count_children().unwrap());
            println!("terminate: {:?}", handle.terminate_child("a"));
            println!("after terminate: {}", names(&handle));
            println!("delete running: {:?}", handle.delete_child("nested"));
            println!("restart: {:?}", handle.restart_child("a").map(|_| "a pid"));
            expect_events(&events, 1);
            println!("restart running: {:?}", handle.restart_child("a"));
            println!("terminate missing: {:?}", handle.terminate_child("zzz"));
            println!("start on static: {:?}", handle.start_child());
            handle.terminate_child("a").unwrap();
            println!("delete: {:?}", handle.delete_child("a"));
            println!("after delete: {}", names(&handle));
            stop(supervisor);
            println!("handle of a gone supervisor: {:?}", SupervisorHandle::new(supervisor).count_children());
        }
        "dynamic" => {
            let template = Child::new(
                "dyn",
                small(),
                FnOnce!(|_sup: Pid| {
                    let life = incarnation("dyn");
                    event(format!("dyn {life}"));
                    if life == 2 {
                        panic!("the second one crashes");
                    }
                }),
            )
            .restart(Restart::Transient);
            let pool =
                DynamicSupervisor::new(template).intensity(3, Duration::from_secs(10)).spawn(small()).block().unwrap();
            // Started from another process, which has never met the pool's children.
            let client = spawn(
                small(),
                FnOnce!(move |parent: Pid| {
                    let handle = SupervisorHandle::new(pool);
                    let started: Vec<Pid> = (0..3).map(|_| handle.start_child().unwrap()).collect();
                    Sender::<usize>::new(parent).send(started.len()).block();
                }),
            )
            .block()
            .unwrap();
            println!("client started: {}", Receiver::<usize>::new(client).recv().block().unwrap());
            let mut seen = expect_events(&events, 4);
            seen.sort();
            println!("lives: {}", seen.join(", "));
            let handle = SupervisorHandle::new(pool);
            // Ended children are forgotten.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while handle.count_children().unwrap().specs > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("count: {:?}", handle.count_children().unwrap());
            stop(pool);
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
    let _ = std::fs::remove_dir_all(run_dir());
}
