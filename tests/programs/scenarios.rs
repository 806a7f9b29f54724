//! Programs the end-to-end tests run, one per scenario named by the first argument.
//! Each prints what the test checks; see `tests/*.rs`.
use constellation::*;
use futures::{future::join_all, select, FutureExt};
use std::{
    io::{BufRead, Write},
    time::Duration,
};

fn small() -> Resources {
    Resources { mem: 30 * Mem::MIB, ..Resources::default() }
}

/// Sends 256 MiB in 1 MiB values (strings: quick to encode even unoptimised),
/// then prints its peak resident memory.
fn flood(parent: Pid) {
    let sender = Sender::<String>::new(parent);
    let value = "x".repeat(1024 * 1024);
    for _ in 0..256 {
        sender.send(value.clone()).block();
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_string();
    drop(sender);
    println!("{peak}");
}

/// Mail number `i` of a flood: 4 KiB.
fn mail_block(i: u64) -> Vec<u64> {
    vec![i; 512]
}

/// Sends `n` mails to the "flood" mailbox of the process registered as "sink".
fn flood_mail(n: u64) {
    let sender = Sender::<Vec<u64>>::to_registered("sink", "flood");
    for i in 0..n {
        sender.send(mail_block(i)).block();
    }
}

fn no_answer() -> u64 {
    panic!("no answer")
}

/// This process's memory cgroup and its limit, as `<path> <bytes>`.
fn memory_cgroup() -> String {
    let table = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let v1 = table.lines().find_map(|line| line.split_once(":memory:").map(|(_, path)| path.to_string()));
    let (path, limit_file) = match v1 {
        Some(path) => (path.clone(), format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")),
        None => {
            let path = table.lines().find_map(|line| line.strip_prefix("0::")).unwrap_or_default().to_string();
            (path.clone(), format!("/sys/fs/cgroup{path}/memory.max"))
        }
    };
    let limit = std::fs::read_to_string(limit_file).unwrap_or_default();
    format!("{path} {}", limit.trim())
}

/// Spawns a process with `mem` that reports its memory cgroup (then runs
/// `then`), and waits for its end; returns the report.
fn cgroup_of_a_child(mem: Mem, hog: bool) -> String {
    let child = spawn(
        Resources { mem, ..Resources::default() },
        FnOnce!(move |parent: Pid| {
            Sender::<String>::new(parent).send(memory_cgroup()).block();
            if hog {
                hog_memory();
            }
        }),
    )
    .block()
    .unwrap();
    let down = monitor(child);
    let report = Receiver::<String>::new(child).recv().block().unwrap();
    println!("ended: {}", down.block().status);
    report
}

/// How many of this process's sockets are TCP connections (not listeners),
/// and how many are Unix sockets.
fn own_sockets() -> (usize, usize) {
    let inodes: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    let count = |table: &str, inode_column: usize, connected: &dyn Fn(&[&str]) -> bool| {
        std::fs::read_to_string(table)
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|row| row.get(inode_column).is_some_and(|inode| inodes.iter().any(|i| i == inode)))
            .filter(|row| connected(row))
            .count()
    };
    // /proc/net/tcp: `st` (4th column) 01 is ESTABLISHED; the inode is the 10th.
    let tcp = count("/proc/self/net/tcp", 9, &|row| row[3] == "01");
    // /proc/net/unix: the inode is the 7th column.
    let unix = count("/proc/self/net/unix", 6, &|_| true);
    (tcp, unix)
}

/// Touches 400 MiB, 10 MiB at a time.
fn hog_memory() {
    let mut hog: Vec<Vec<u8>> = Vec::new();
    for _ in 0..40 {
        hog.push(vec![1u8; 10 << 20]);
    }
    println!("allocated {} MiB without being stopped", hog.len() * 10);
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match scenario.as_str() {
        // Errors that must be caught before or by init.
        "no_init" => {
            println!("{}", pid());
            return;
        }
        "threads_first" => {
            let _thread = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(5)));
            init(Resources::default());
            return;
        }
        _ => {}
    }
    init(Resources::default());
    match scenario.as_str() {
        "exit_code" => {
            let code = std::env::args().nth(2).and_then(|c| c.parse().ok()).unwrap_or(1);
            println!("exiting with {code}");
            std::process::exit(code);
        }
        "panic_child" => {
            let child = spawn(small(), FnOnce!(|_parent: Pid| panic!("boom"))).block().unwrap();
            let result = Receiver::<u64>::new(child).recv().block();
            println!("recv: {result:?}");
        }
        "abort_child" => {
            let child = spawn(small(), FnOnce!(|_parent: Pid| std::process::abort())).block().unwrap();
            println!("recv: {:?}", Receiver::<u64>::new(child).recv().block());
        }
        "binary_output" => {
            let bytes: Vec<u8> = (0..=255).collect();
            std::io::stdout().write_all(&bytes).unwrap();
            std::io::stderr().write_all(&bytes).unwrap();
        }
        "inherit" => {
            std::env::set_var("SET_AT_RUNTIME", "yes");
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let args: Vec<String> = std::env::args().collect();
                    let vars: Vec<String> = std::env::vars()
                        .filter(|(k, _)| {
                            k.starts_with("SCENARIO_") || k == "SET_AT_RUNTIME" || k.starts_with("CONSTELLATION_")
                        })
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let cwd = std::env::current_dir().unwrap();
                    Sender::<(Vec<String>, Vec<String>, String)>::new(parent)
                        .send((args, vars, cwd.display().to_string()))
                        .block();
                }),
            )
            .block()
            .unwrap();
            let (args, mut vars, cwd) =
                Receiver::<(Vec<String>, Vec<String>, String)>::new(child).recv().block().unwrap();
            vars.sort();
            println!("args: {}", args[1..].join(" "));
            println!("vars: {}", vars.join(" "));
            println!("cwd: {cwd}");
        }
        "inherit_changes" => {
            // What each child sees of a variable and the working directory, as
            // the parent changes them between spawns.
            let report = || {
                let child = spawn(
                    small(),
                    FnOnce!(|parent: Pid| {
                        let changed = std::env::var("CHANGED_LATER").unwrap_or_else(|_| "unset".into());
                        let cwd = std::env::current_dir().unwrap().display().to_string();
                        Sender::<String>::new(parent).send(format!("{changed} in {cwd}")).block();
                    }),
                )
                .block()
                .unwrap();
                Receiver::<String>::new(child).recv().block().unwrap()
            };
            println!("first: {}", report());
            std::env::set_var("CHANGED_LATER", "yes");
            println!("changed: {}", report());
            std::env::remove_var("CHANGED_LATER");
            std::env::set_current_dir("/").unwrap();
            println!("moved: {}", report());
            std::env::set_current_dir(std::env::args().nth(2).unwrap()).unwrap();
            println!("back: {}", report());
        }
        "zygote_killed" => {
            // A sleeper is up; the test then kills the process spawns fork from.
            let sleeper = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    Sender::<()>::new(parent).send(()).block();
                    std::thread::sleep(Duration::from_secs(60));
                }),
            )
            .block()
            .unwrap();
            let down = monitor(sleeper);
            Receiver::<()>::new(sleeper).recv().block().unwrap();
            println!("ready");
            println!("down: {}", down.block().status);
            let child =
                spawn(small(), FnOnce!(|parent: Pid| Sender::<u64>::new(parent).send(7).block())).block().unwrap();
            println!("after: {}", Receiver::<u64>::new(child).recv().block().unwrap());
        }
        "ten_children" => {
            let children: Vec<Pid> = (0..10u64)
                .map(|i| {
                    spawn(
                        small(),
                        FnOnce!(move |parent: Pid| {
                            let receiver = Receiver::<u64>::new(parent);
                            let sender = Sender::<u64>::new(parent);
                            while let Ok(x) = receiver.recv().block() {
                                sender.send(x * 10 + i).block();
                            }
                        }),
                    )
                    .block()
                    .unwrap()
                })
                .collect();
            let senders: Vec<_> = children.iter().map(|&c| Sender::<u64>::new(c)).collect();
            let receivers: Vec<_> = children.iter().map(|&c| Receiver::<u64>::new(c)).collect();
            let mut answers = Vec::new();
            for round in 1..=3u64 {
                for sender in &senders {
                    sender.send(round).block();
                }
                for receiver in &receivers {
                    answers.push(receiver.recv().block().unwrap());
                }
            }
            println!("answers: {answers:?}");
        }
        "select_timeout" => {
            let slow = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    std::thread::sleep(Duration::from_millis(200));
                    Sender::<String>::new(parent).send("slow".to_string()).block();
                }),
            )
            .block()
            .unwrap();
            let silent = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    // Hold the channel open without sending until told to stop.
                    let _sender = Sender::<String>::new(parent);
                    let _ = Receiver::<()>::new(parent).recv().block();
                }),
            )
            .block()
            .unwrap();
            let from_slow = Receiver::<String>::new(slow);
            let from_silent = Receiver::<String>::new(silent);
            let first = async {
                select! {
                    value = from_slow.recv().fuse() => format!("slow sent {value:?}"),
                    value = from_silent.recv().fuse() => format!("silent sent {value:?}"),
                    _ = sleep(Duration::from_secs(20)).fuse() => "timed out".to_string(),
                }
            }
            .block();
            let second = async {
                select! {
                    value = from_silent.recv().fuse() => format!("silent sent {value:?}"),
                    _ = sleep(Duration::from_millis(300)).fuse() => "timed out".to_string(),
                }
            }
            .block();
            let waited = timeout(Duration::from_millis(100), from_silent.recv()).block();
            println!("first: {first}");
            println!("second: {second}");
            println!("timeout: {waited:?}");
            Sender::<()>::new(silent).send(()).block();
        }
        "duplicate_sender" => {
            let child = spawn(small(), FnOnce!(|_parent: Pid| {})).block().unwrap();
            let _first = Sender::<u64>::new(child);
            let _second = Sender::<String>::new(child);
        }
        "duplicate_receiver" => {
            let child = spawn(small(), FnOnce!(|_parent: Pid| {})).block().unwrap();
            let _first = Receiver::<u64>::new(child);
            let _second = Receiver::<u64>::new(child);
        }
        "try_send" => {
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    // Wait to be told to read, so the parent can fill the buffer.
                    let _ = Receiver::<()>::new(parent).recv().block();
                    let values = Receiver::<Vec<u8>>::new(parent);
                    while values.recv().block().is_ok() {}
                }),
            )
            .block()
            .unwrap();
            let sender = Sender::<Vec<u8>>::new(child);
            let mut accepted = 0;
            let full = loop {
                match sender.try_send(vec![0u8; 64 * 1024]) {
                    Ok(()) => accepted += 1,
                    Err(error) => break error,
                }
                assert!(accepted < 100_000, "try_send never reported a full buffer");
            };
            println!("full after some values: {} ({})", matches!(full, SendError::Full(_)), accepted > 0);
            let down = monitor(child);
            kill(child);
            down.block();
            // Give the end notice time to arrive; try_send learns it without blocking.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let gone = loop {
                match sender.try_send(vec![1]) {
                    Err(SendError::Disconnected(value)) => break value,
                    _ if std::time::Instant::now() > deadline => panic!("try_send never saw the peer gone"),
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            println!("disconnected hands the value back: {gone:?}");
        }
        "sender_to_self" => {
            let _sender = Sender::<u64>::new(pid());
        }
        "unterminated_output" => {
            // Each child's last line has no newline: it waits in stdout's buffer
            // until the process ends, by returning or by a panic.
            let returns = spawn(small(), FnOnce!(|_parent: Pid| print!("returns without a newline"))).block().unwrap();
            let panics = spawn(
                small(),
                FnOnce!(|_parent: Pid| {
                    print!("panics without a newline");
                    panic!("boom");
                }),
            )
            .block()
            .unwrap();
            println!("{returns} {panics}");
            for child in [returns, panics] {
                monitor(child).block();
            }
        }
        "silent_child" => {
            let child = spawn(small(), FnOnce!(|_parent: Pid| {})).block().unwrap();
            println!("recv: {:?}", Receiver::<u64>::new(child).recv().block());
            println!("again: {:?}", Receiver::<u64>::new(child).recv().block());
        }
        "send_before_exit" => {
            let count: u64 = 100_000;
            let child = spawn(
                small(),
                FnOnce!(move |parent: Pid| {
                    let sender = Sender::<u64>::new(parent);
                    for i in 0..count {
                        sender.send(i).block();
                    }
                    // Return at once: the exit flush must deliver everything.
                    std::mem::forget(sender);
                }),
            )
            .block()
            .unwrap();
            let receiver = Receiver::<u64>::new(child);
            let (mut received, mut in_order) = (0u64, true);
            loop {
                match receiver.recv().block() {
                    Ok(value) => {
                        in_order &= value == received;
                        received += 1;
                    }
                    Err(error) => {
                        println!("received {received} in order {in_order}, then {error:?}");
                        break;
                    }
                }
            }
        }
        "slow_receiver" => {
            let child =
                spawn(Resources { mem: 100 * Mem::MIB, ..Resources::default() }, FnOnce!(|parent: Pid| flood(parent)))
                    .block()
                    .unwrap();
            std::thread::sleep(Duration::from_secs(1));
            let receiver = Receiver::<String>::new(child);
            let mut total = 0usize;
            while let Ok(chunk) = receiver.recv().block() {
                total += chunk.len();
                std::thread::sleep(Duration::from_millis(2));
            }
            println!("received {} MiB", total >> 20);
        }
        "small_values_past_a_full_socket" => {
            // Far more small values than the socket holds, while the receiver
            // is not reading yet: the sender's own writes fill the socket, and
            // the rest goes out as room comes.
            const N: u64 = 3_000_000;
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let sender = Sender::<u64>::new(parent);
                    for i in 0..N {
                        sender.send(i).block();
                    }
                }),
            )
            .block()
            .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let receiver = Receiver::<u64>::new(child);
            let in_order = (0..N).all(|i| receiver.recv().block() == Ok(i));
            println!("received {N} in order {in_order}, then {:?}", receiver.recv().block());
        }
        "shared_ends" => {
            // One Sender used by four threads at once, one Receiver by two:
            // each value arrives once, and each sending thread's values reach
            // each receiving thread in the order they were sent.
            const THREADS: u64 = 4;
            const EACH: u64 = 250_000;
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let sender = std::sync::Arc::new(Sender::<u64>::new(parent));
                    let threads: Vec<_> = (0..THREADS)
                        .map(|t| {
                            let sender = sender.clone();
                            std::thread::spawn(move || {
                                for i in 0..EACH {
                                    sender.send(t << 32 | i).block();
                                }
                            })
                        })
                        .collect();
                    for thread in threads {
                        thread.join().unwrap();
                    }
                }),
            )
            .block()
            .unwrap();
            let receiver = std::sync::Arc::new(Receiver::<u64>::new(child));
            let receivers: Vec<_> = (0..2)
                .map(|_| {
                    let receiver = receiver.clone();
                    std::thread::spawn(move || {
                        let mut got = Vec::new();
                        while let Ok(value) = receiver.recv().block() {
                            got.push(value);
                        }
                        got
                    })
                })
                .collect();
            let views: Vec<Vec<u64>> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
            let in_order = views.iter().all(|view| {
                (0..THREADS).all(|t| {
                    let mine: Vec<u64> = view.iter().filter(|v| *v >> 32 == t).map(|v| v & 0xffff_ffff).collect();
                    mine.windows(2).all(|w| w[0] < w[1])
                })
            });
            let mut all: Vec<u64> = views.concat();
            let count = all.len();
            all.sort_unstable();
            all.dedup();
            let expected: Vec<u64> = (0..THREADS).flat_map(|t| (0..EACH).map(move |i| t << 32 | i)).collect();
            println!("received {count}, each once {}, in order {in_order}", all == expected);
        }
        "receiver_reopened" => {
            // Small values are taken from the connection many at a time: those a
            // dropped Receiver took and did not receive go to the next one, in order.
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let sender = Sender::<u64>::new(parent);
                    for i in 0..10_000u64 {
                        sender.send(i).block();
                    }
                    drop(sender);
                    Sender::<String>::new(parent).send("then text".to_string()).block();
                }),
            )
            .block()
            .unwrap();
            let mut received = Vec::new();
            for take in [3usize, 1, 5000, usize::MAX] {
                let receiver = Receiver::<u64>::new(child);
                while received.len() < 10_000 && take > 0 {
                    received.push(receiver.recv().block().unwrap());
                    if received.len() % take.min(10_000) == 0 && take != usize::MAX {
                        break;
                    }
                }
            }
            let in_order = received.iter().copied().eq(0..10_000u64);
            println!("reopened: {} values in order {in_order}", received.len());
            let receiver = Receiver::<u64>::new(child);
            println!("after: {:?}", receiver.recv().block());
            println!("then: {:?}", receiver.recv().block());
        }
        "value_then_end" => {
            // Each child sends one value and ends at once: its value and its end
            // may reach the parent in one read, while the parent waits in recv.
            let mut ends = 0;
            for _ in 0..50 {
                let child = spawn(
                    small(),
                    FnOnce!(|parent: Pid| {
                        Sender::<u64>::new(parent).send(7).block();
                    }),
                )
                .block()
                .unwrap();
                let receiver = Receiver::<u64>::new(child);
                assert_eq!(receiver.recv().block(), Ok(7));
                assert_eq!(receiver.recv().block(), Err(RecvError::SenderDropped));
                let end = timeout(Duration::from_secs(10), receiver.recv()).block();
                ends += usize::from(end == Ok(Err(RecvError::PeerEnded)));
            }
            // Values awaited together in one task, the one polled last sending
            // first: the thread waits on that one's socket itself and must wake
            // its part of the task.
            let children: Vec<Pid> = (0..50u64)
                .map(|i| {
                    let child = FnOnce!(move |parent: Pid| {
                        std::thread::sleep(Duration::from_millis(300 + (49 - i) * 5));
                        Sender::<u64>::new(parent).send(i).block();
                    });
                    spawn(small(), child).block().unwrap()
                })
                .collect();
            let receivers: Vec<Receiver<u64>> = children.iter().map(|&child| Receiver::new(child)).collect();
            let all = futures::future::join_all(receivers.iter().map(|r| r.recv()));
            let values = timeout(Duration::from_secs(10), all).block().map(|v| v.into_iter().flatten().sum::<u64>());
            println!("ends seen: {ends} of 50; together: {values:?}");
        }
        "other_executor" => {
            // Values received by `block`, then by another executor, in turns: the
            // I/O thread stops listening for input a blocked thread reads itself,
            // and must listen again for a task that nobody polls the socket for.
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let words = Receiver::<u64>::new(parent);
                    let sender = Sender::<u64>::new(parent);
                    while let Ok(word) = words.recv().block() {
                        // Sent once the parent surely waits.
                        std::thread::sleep(Duration::from_millis(20));
                        sender.send(word * 10).block();
                    }
                }),
            )
            .block()
            .unwrap();
            let (sender, receiver) = (Sender::<u64>::new(child), Receiver::<u64>::new(child));
            let mut got = Vec::new();
            for word in 1..=6u64 {
                sender.send(word).block();
                let value =
                    if word % 2 == 1 { receiver.recv().block() } else { futures::executor::block_on(receiver.recv()) };
                got.push(value.unwrap());
            }
            println!("other executor: {got:?}");
        }
        "connections" => {
            // A ping-pong with a child, then this process's sockets.
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let receiver = Receiver::<u64>::new(parent);
                    let value = receiver.recv().block().unwrap();
                    Sender::<u64>::new(parent).send(value + 1).block();
                    // Stays until the parent has looked.
                    let _ = receiver.recv().block();
                }),
            )
            .block()
            .unwrap();
            let sender = Sender::<u64>::new(child);
            sender.send(1).block();
            println!("received: {:?}", Receiver::<u64>::new(child).recv().block());
            let (tcp, unix) = own_sockets();
            println!("tcp connections: {tcp}");
            println!("unix sockets: {}", if unix > 0 { "some" } else { "none" });
            sender.send(0).block();
        }
        "byte_vectors" => {
            // Byte vectors of every size class (large ones are queued without a
            // copy), interleaved with small values, arrive whole and in order.
            let sizes: Vec<usize> = vec![0, 1, 65_535, 65_536, 65_537, 1 << 20, 3, (1 << 20) + 7, 200_000, 5];
            let sent = sizes.clone();
            let child = spawn(
                Resources { mem: 200 * Mem::MIB, ..small() },
                FnOnce!(move |parent: Pid| {
                    let sender = Sender::<Vec<u8>>::new(parent);
                    for round in 0..20u8 {
                        for &size in &sent {
                            let bytes: Vec<u8> =
                                (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(round)).collect();
                            sender.send(bytes).block();
                        }
                    }
                }),
            )
            .block()
            .unwrap();
            let mut intact = 0;
            let mut receiver = Receiver::<Vec<u8>>::new(child);
            for round in 0..20u8 {
                // A new Receiver each round: what the old one had read and not
                // received goes to the new one.
                drop(receiver);
                receiver = Receiver::<Vec<u8>>::new(child);
                for &size in &sizes {
                    let bytes = receiver.recv().block().unwrap();
                    let expected = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(round));
                    intact += usize::from(bytes.len() == size && bytes.iter().copied().eq(expected));
                }
            }
            println!("intact: {intact} of {}; then {:?}", 20 * sizes.len(), receiver.recv().block());
        }
        "type_mismatch" => {
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    Sender::<String>::new(parent).send("text".to_string()).block();
                }),
            )
            .block()
            .unwrap();
            println!("recv: {:?}", Receiver::<u64>::new(child).recv().block());
        }
        "concurrent_spawns" => {
            let count = 200u64;
            let spawns = (0..count).map(|i| {
                spawn(
                    Resources { mem: 20 * Mem::MIB, ..Resources::default() },
                    FnOnce!(move |parent: Pid| Sender::<u64>::new(parent).send(i).block()),
                )
            });
            let children: Vec<Pid> = join_all(spawns).block().into_iter().map(|r| r.unwrap()).collect();
            let sum: u64 = children.iter().map(|&c| Receiver::<u64>::new(c).recv().block().unwrap()).sum();
            println!("{} children, sum {sum}", children.len());
        }
        "memory_limit" => {
            let child =
                spawn(Resources { mem: 50 * Mem::MIB, ..Resources::default() }, FnOnce!(|_parent: Pid| hog_memory()))
                    .block()
                    .unwrap();
            println!("recv: {:?}", Receiver::<u64>::new(child).recv().block());
        }
        "output_order" => {
            // Each round: a long line, then a child that prints at once.
            let filler = "x".repeat(32 * 1024);
            for round in 0..30 {
                println!("before {round} {filler}");
                let child = spawn(small(), FnOnce!(move |_parent: Pid| println!("child {}", round))).block().unwrap();
                monitor(child).block();
            }
        }
        "cgroup_reuse" => {
            // One child at a time, with a pause after each (a monitor frees its
            // cgroup a moment after the child's end is known).
            let run = |label: &str, mib: u64, hog: bool| {
                println!("{label}: {} {}", cgroup_of_a_child(mib * Mem::MIB, hog), mib << 20);
                std::thread::sleep(Duration::from_millis(20));
            };
            for mib in [30, 50, 40, 30, 50, 40] {
                run("before", mib, false);
            }
            run("killed", 30, true);
            for mib in [30, 50, 40, 30, 50, 40] {
                run("after", mib, false);
            }
        }
        "capacity" => {
            let huge = Resources { mem: 64 * Mem::TIB, ..Resources::default() };
            let refused = try_spawn(huge, FnOnce!(|_parent: Pid| {})).block();
            println!("try_spawn: {refused:?}");
            let child = spawn(huge, FnOnce!(|parent: Pid| Sender::<u64>::new(parent).send(1).block())).block().unwrap();
            println!("spawn: {:?}", Receiver::<u64>::new(child).recv().block());
        }
        "sleepers" => {
            let children: Vec<Pid> = (0..4)
                .map(|_| {
                    spawn(
                        small(),
                        FnOnce!(|parent: Pid| {
                            Sender::<()>::new(parent).send(()).block();
                            loop {
                                std::thread::sleep(Duration::from_secs(60));
                            }
                        }),
                    )
                    .block()
                    .unwrap()
                })
                .collect();
            for &child in &children {
                Receiver::<()>::new(child).recv().block().unwrap();
            }
            println!("ready");
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        "stdin_echo" => {
            for line in std::io::stdin().lock().lines() {
                println!("{}", line.unwrap().to_uppercase());
            }
            println!("end of input");
        }
        "monitor" => {
            // Each child waits for a word before ending, so the monitor is set up
            // while it lives.
            let coded = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let _ = Receiver::<()>::new(parent).recv().block();
                    std::process::exit(7)
                }),
            )
            .block()
            .unwrap();
            let down = monitor(coded);
            Sender::<()>::new(coded).send(()).block();
            println!("code: {:?}", down.block().status);
            let panicky = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let _ = Receiver::<()>::new(parent).recv().block();
                    panic!("boom")
                }),
            )
            .block()
            .unwrap();
            let down = monitor(panicky);
            Sender::<()>::new(panicky).send(()).block();
            println!("panic: {:?}", down.block().status);
            println!("gone: {:?}", monitor(coded).block().status);
            // A Pid no process of this job ever had.
            let unknown: Pid =
                serde_json::from_str(r#"{"incarnation":4000000,"ip":[127,0,0,1],"port":9}"#).expect("a Pid");
            println!("unknown: {:?}", monitor(unknown).block().status);
            let killed =
                spawn(small(), FnOnce!(|_parent: Pid| std::thread::sleep(Duration::from_secs(60)))).block().unwrap();
            let down = monitor(killed);
            kill(killed);
            println!("killed: {}", down.block().status);
        }
        "link_cascade" => {
            // middle links to a child that panics; middle is killed with it.
            let middle = spawn(
                small(),
                FnOnce!(|_parent: Pid| {
                    spawn_link(
                        small(),
                        FnOnce!(|_parent: Pid| {
                            std::thread::sleep(Duration::from_millis(500));
                            panic!("crash")
                        }),
                    )
                    .block()
                    .unwrap();
                    std::thread::sleep(Duration::from_secs(60));
                    println!("middle survived");
                }),
            )
            .block()
            .unwrap();
            let status = monitor(middle).block().status;
            println!("middle: {}", status);
        }
        "link_trapped" => {
            let middle = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    trap_exits(true);
                    let crasher = spawn_link(small(), FnOnce!(|_parent: Pid| panic!("crash"))).block().unwrap();
                    let finisher = spawn_link(small(), FnOnce!(|_parent: Pid| {})).block().unwrap();
                    let mut signals = exits();
                    let mut seen = Vec::new();
                    for _ in 0..2 {
                        let exit = futures::StreamExt::next(&mut signals).block().unwrap();
                        let who = if exit.pid == crasher {
                            "crasher"
                        } else if exit.pid == finisher {
                            "finisher"
                        } else {
                            "?"
                        };
                        seen.push(format!("{who}: {}", exit.status));
                    }
                    seen.sort();
                    // A link to a process already gone is an immediate NoProc signal.
                    link(crasher);
                    let exit = futures::StreamExt::next(&mut signals).block().unwrap();
                    seen.push(format!("relink: {}", exit.status));
                    Sender::<Vec<String>>::new(parent).send(seen).block();
                }),
            )
            .block()
            .unwrap();
            let down = monitor(middle);
            for line in Receiver::<Vec<String>>::new(middle).recv().block().unwrap() {
                println!("{line}");
            }
            println!("middle: {}", down.block().status);
        }
        "normal_exit_no_cascade" => {
            let middle = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let child = spawn_link(small(), FnOnce!(|_parent: Pid| {})).block().unwrap();
                    monitor(child).block();
                    std::thread::sleep(Duration::from_millis(100));
                    Sender::<String>::new(parent).send("still here".to_string()).block();
                }),
            )
            .block()
            .unwrap();
            println!("middle says: {}", Receiver::<String>::new(middle).recv().block().unwrap());
        }
        "sink_stream" => {
            use futures::{SinkExt, StreamExt};
            let child = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let mut sender = Sender::<u64>::new(parent);
                    async {
                        let mut values = futures::stream::iter((1..=100u64).map(Ok));
                        sender.send_all(&mut values).await.unwrap();
                        sender.flush().await.unwrap();
                    }
                    .block();
                }),
            )
            .block()
            .unwrap();
            let receiver = Receiver::<u64>::new(child);
            let values: Vec<u64> = receiver.collect::<Vec<_>>().block();
            println!("streamed {} values summing to {}", values.len(), values.iter().sum::<u64>());
        }
        "jobs" => {
            println!("value: {:?}", job(small(), FnOnce!(|| 6 * 7)).block());
            println!("panic: {:?}", job(small(), FnOnce!(|| no_answer())).block());
            let hog = job(Resources { mem: 50 * Mem::MIB, ..Resources::default() }, FnOnce!(|| hog_memory())).block();
            println!("memory: {hog:?}");
            let spin = job(
                small(),
                FnOnce!(|| loop {
                    std::hint::black_box(0u64);
                }),
            )
            .cpu_time(Duration::from_secs(1))
            .block();
            println!("cpu: {:?}", spin.map(|()| "finished"));
            let mut slow = job(
                small(),
                FnOnce!(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    5u64
                }),
            );
            println!("try_get first: {:?}", slow.try_get());
            println!("try_get later: {:?}", timeout(Duration::from_secs(20), slow).block());
            let mut forever = job(
                small(),
                FnOnce!(|| {
                    std::thread::sleep(Duration::from_secs(60));
                    0u64
                }),
            );
            // try_get starts it; the Pid comes once the spawn is answered.
            let pid = loop {
                assert!(forever.try_get().is_none());
                if let Some(pid) = forever.pid() {
                    break pid;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let down = monitor(pid);
            forever.abort();
            println!("aborted: {}", down.block().status);
        }
        "drop_starting_job" => {
            // Dropped while its spawn is still being answered: its process must
            // not outlive it (it would keep the job running for a minute).
            let mut sleeper = job(
                small(),
                FnOnce!(|| {
                    std::thread::sleep(Duration::from_secs(60));
                    0u64
                }),
            );
            assert!(sleeper.try_get().is_none());
            drop(sleeper);
            println!("dropped");
        }
        "fanout" => {
            fn now() -> u128 {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            }
            let results = Fanout::new(
                small(),
                Fn!(|i: u64| {
                    let start = now();
                    std::thread::sleep(Duration::from_millis(30));
                    if i == 13 {
                        panic!("unlucky {i}");
                    }
                    (i * 2, start, now())
                }),
            )
            .concurrency(3)
            .run((0..20).collect())
            .block();
            let values: Vec<String> = results
                .iter()
                .map(|r| match r {
                    Ok((v, _, _)) => v.to_string(),
                    Err(e) => e.to_string(),
                })
                .collect();
            println!("values: {}", values.join(","));
            let spans: Vec<(u128, u128)> =
                results.iter().filter_map(|r| r.as_ref().ok()).map(|&(_, s, e)| (s, e)).collect();
            let most =
                spans.iter().map(|&(s, _)| spans.iter().filter(|&&(s2, e2)| s2 <= s && s < e2).count()).max().unwrap();
            println!("most at once: {}", most.min(3));
            println!("over 3: {}", most > 3);
            let plain = fanout(small(), vec![1u64, 2, 3], Fn!(|x: u64| x + 100)).block();
            println!("plain: {plain:?}");
        }
        "many_alive" => {
            let count: usize = std::env::args().nth(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
            let tiny = Resources { mem: 16 * Mem::MIB, cpu: Cpu::CORE / 64 };
            let spawns = (0..count).map(|_| {
                spawn(
                    tiny,
                    FnOnce!(|parent: Pid| {
                        Sender::<()>::new(parent).send(()).block();
                        let _ = Receiver::<()>::new(parent).recv().block();
                    }),
                )
            });
            let children: Vec<Pid> = join_all(spawns).block().into_iter().map(|r| r.unwrap()).collect();
            let hellos = join_all(children.iter().map(|&c| async move {
                let receiver = Receiver::<()>::new(c);
                receiver.recv().await
            }))
            .block();
            // Every child has said hello and waits for a word: all are alive at once.
            println!("{} alive at once", hellos.iter().filter(|h| h.is_ok()).count());
            for &child in &children {
                Sender::<()>::new(child).send(()).block();
            }
        }
        "sequential" => {
            let count: usize = std::env::args().nth(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
            let parent_of = |pid: u32| -> u32 {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
            };
            let me = std::process::id();
            let bridge = parent_of(parent_of(me));
            let tiny = Resources { mem: 16 * Mem::MIB, cpu: Cpu::CORE / 64 };
            let mut before = None;
            for i in 0..count {
                let child =
                    spawn(tiny, FnOnce!(|parent: Pid| Sender::<()>::new(parent).send(()).block())).block().unwrap();
                let down = monitor(child);
                Receiver::<()>::new(child).recv().block().unwrap();
                down.block();
                if i == 10 {
                    // Measured once the first connections and buffers exist.
                    before = Some((fds(me), fds(bridge)));
                }
            }
            let (me_before, bridge_before) = before.unwrap();
            // The last process's connections close a moment after its end is known.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while (fds(me) > me_before || fds(bridge) > bridge_before) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            println!("{count} spawned one after another");
            println!("fds of this process grew by {}", fds(me).saturating_sub(me_before));
            println!("fds of the bridge grew by {}", fds(bridge).saturating_sub(bridge_before));
            let zombies = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
                    rest.first() == Some(&"Z") && rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(bridge)
                })
                .count();
            println!("zombies of the bridge: {zombies}");
        }
        "demonitor_unlink" => {
            let watched =
                spawn(small(), FnOnce!(|_parent: Pid| std::thread::sleep(Duration::from_secs(60)))).block().unwrap();
            let down = monitor(watched);
            demonitor(watched);
            kill(watched);
            println!("demonitored: {:?}", timeout(Duration::from_millis(500), down).block().map(|d| d.status));
            let crasher = spawn_link(
                small(),
                FnOnce!(|_parent: Pid| {
                    std::thread::sleep(Duration::from_millis(300));
                    panic!("crash after the unlink")
                }),
            )
            .block()
            .unwrap();
            unlink(crasher);
            let down = monitor(crasher);
            println!("crasher: {}", down.block().status);
            println!("survived the unlinked crash");
        }
        "shutdown" => {
            let polite = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    on_shutdown(|| println!("cleaning up"));
                    Sender::<()>::new(parent).send(()).block();
                    std::thread::sleep(Duration::from_secs(60));
                }),
            )
            .block()
            .unwrap();
            Receiver::<()>::new(polite).recv().block().unwrap();
            let down = monitor(polite);
            shutdown(polite, Duration::from_secs(20));
            println!("polite: {}", down.block().status);
            let stubborn = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    on_shutdown(|| {
                        println!("ignoring the shutdown");
                        std::thread::sleep(Duration::from_secs(60));
                    });
                    Sender::<()>::new(parent).send(()).block();
                    std::thread::sleep(Duration::from_secs(60));
                }),
            )
            .block()
            .unwrap();
            Receiver::<()>::new(stubborn).recv().block().unwrap();
            let down = monitor(stubborn);
            shutdown(stubborn, Duration::from_millis(300));
            println!("stubborn: {}", down.block().status);
        }
        "registry" => {
            println!("register: {:?}", register("store"));
            let rival = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    let taken = register("store");
                    let found = whereis("store") == Some(parent);
                    Sender::<String>::new(parent).send(format!("{taken:?} {found}")).block();
                }),
            )
            .block()
            .unwrap();
            let answer = Receiver::<String>::new(rival).recv().block().unwrap();
            println!("rival: {}", answer.replace(&pid().to_string(), "TOP"));
            let holder = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    register("cache").unwrap();
                    Sender::<()>::new(parent).send(()).block();
                }),
            )
            .block()
            .unwrap();
            Receiver::<()>::new(holder).recv().block().unwrap();
            monitor(holder).block();
            println!("after its end: {:?}", whereis("cache"));
            println!("again: {:?}", register("cache"));
            unregister("store");
            println!("unregistered: {:?}", whereis("store"));
        }
        "mail_flood" => {
            // More mail than the bridge connection holds, sent while its
            // receiver is not reading yet: the rest goes out as room comes.
            const N: u64 = 2_000;
            register("sink").unwrap();
            let mail = Mailbox::<Vec<u64>>::open("flood");
            let child = spawn(small(), FnOnce!(|_parent: Pid| flood_mail(N))).block().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let in_order =
                (0..N).all(|i| matches!(mail.recv().block(), Ok((from, v)) if from == child && v == vec![i; 512]));
            println!("mail: {N} in order {in_order}");
        }
        "threads_share_the_bridge" => {
            // Threads blocked on the bridge's answers read its connection
            // themselves: all of them, and a thread waiting on a process that
            // ends without ever connecting, hear what is theirs.
            const THREADS: usize = 4;
            const ROUNDS: usize = 300;
            let echo = spawn(
                small(),
                FnOnce!(|parent: Pid| {
                    register("echo").unwrap();
                    let requests = Mailbox::<usize>::open("requests");
                    Sender::<()>::new(parent).send(()).block();
                    while let Ok((from, thread)) = requests.recv().block() {
                        if thread == usize::MAX {
                            break;
                        }
                        Sender::<usize>::to_mailbox(from, &format!("replies{thread}")).send(thread).block();
                    }
                }),
            )
            .block()
            .unwrap();
            Receiver::<()>::new(echo).recv().block().expect("the echo server registered");
            // Processes that end without a word, while the threads below wait on
            // the bridge and once they all have stopped.
            let waiting: Vec<_> = [10, 500]
                .map(|ms| {
                    let silent =
                        spawn(small(), FnOnce!(move |_parent: Pid| std::thread::sleep(Duration::from_millis(ms))))
                            .block()
                            .unwrap();
                    std::thread::spawn(move || Receiver::<u64>::new(silent).recv().block())
                })
                .into();
            let threads: Vec<_> = (0..THREADS)
                .map(|thread| {
                    std::thread::spawn(move || {
                        let replies = Mailbox::<usize>::open(&format!("replies{thread}"));
                        let mut rounds = 0;
                        for _ in 0..ROUNDS {
                            let echo = whereis("echo").expect("the echo server is registered");
                            Sender::<usize>::to_mailbox(echo, "requests").send(thread).block();
                            let (_, answer) = replies.recv().block().expect("an answer");
                            assert_eq!(answer, thread);
                            rounds += 1;
                        }
                        rounds
                    })
                })
                .collect();
            let rounds: usize = threads.into_iter().map(|t| t.join().expect("a calling thread")).sum();
            println!("rounds: {rounds}");
            let silent: Vec<_> = waiting.into_iter().map(|t| t.join().expect("a waiting thread")).collect();
            println!("silent: {silent:?}");
            Sender::<usize>::to_mailbox(echo, "requests").send(usize::MAX).block();
        }
        "mailboxes" => {
            // A registered store answers workers it has never heard of.
            let store = spawn(
                small(),
                FnOnce!(|_parent: Pid| {
                    register("store").unwrap();
                    let requests = Mailbox::<u64>::open("requests");
                    for _ in 0..3 {
                        let (from, key) = requests.recv().block().unwrap();
                        Sender::<u64>::to_mailbox(from, "replies").send(key * 100).block();
                    }
                }),
            )
            .block()
            .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while whereis("store") != Some(store) {
                assert!(std::time::Instant::now() < deadline, "the store never registered");
                std::thread::sleep(Duration::from_millis(10));
            }
            let workers: Vec<Pid> = (1..=3u64)
                .map(|key| {
                    spawn(
                        small(),
                        FnOnce!(move |parent: Pid| {
                            let replies = Mailbox::<u64>::open("replies");
                            Sender::<u64>::to_registered("store", "requests").send(key).block();
                            let (_, value) = replies.recv().block().unwrap();
                            Sender::<u64>::new(parent).send(value).block();
                        }),
                    )
                    .block()
                    .unwrap()
                })
                .collect();
            let mut answers: Vec<u64> =
                workers.iter().map(|&w| Receiver::<u64>::new(w).recv().block().unwrap()).collect();
            answers.sort();
            println!("answers: {answers:?}");
            let typed = Mailbox::<String>::open("typed");
            let me = pid();
            spawn(small(), FnOnce!(move |_parent: Pid| Sender::<u64>::to_mailbox(me, "typed").send(5).block()))
                .block()
                .unwrap();
            println!("typed: {:?}", typed.recv().block().map(|(_, v)| v));
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
}
