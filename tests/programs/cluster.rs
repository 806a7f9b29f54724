//! Programs the loopback-cluster tests deploy (`tests/cluster.rs`), one per
//! scenario named by the first argument. Each says where its processes ran.
use constellation::*;
use constellation_supervisor::*;
use std::time::Duration;

fn ip() -> String {
    pid().addr().ip().to_string()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("never_init") {
        // A program that takes too long to reach init.
        std::thread::sleep(Duration::from_secs(60));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The partition test needs the top process and the supervisor on the node
    // that stays connected: they ask for more memory than the other node has.
    let big = Resources { mem: 3 * Mem::GIB, ..Resources::default() };
    let partitionable = args.first().is_some_and(|a| a == "partitionable");
    init(if partitionable { big } else { Resources::default() });
    let scenario = args.first().cloned().unwrap_or_default();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
    match scenario.as_str() {
        // A child that needs `MIB` of memory says where it landed.
        "where" => {
            let mem = number(1) * Mem::MIB;
            let child = spawn(
                Resources { mem, ..Resources::default() },
                FnOnce!(|parent: Pid| Sender::<String>::new(parent).send(pid().addr().ip().to_string()).block()),
            )
            .block()
            .expect("spawning the child");
            println!("child on {}", Receiver::<String>::new(child).recv().block().expect("the child's answer"));
        }
        // `N` children, all alive at once, say where they ran; the top lists the
        // distinct addresses.
        "spread" => {
            let children: Vec<Pid> = (0..number(1))
                .map(|_| {
                    spawn(
                        Resources::default(),
                        FnOnce!(|parent: Pid| {
                            Receiver::<()>::new(parent).recv().block().expect("the word to answer");
                            Sender::<String>::new(parent).send(pid().addr().ip().to_string()).block()
                        }),
                    )
                    .block()
                    .expect("spawning a child")
                })
                .collect();
            for &child in &children {
                Sender::<()>::new(child).send(()).block();
            }
            let mut ips: Vec<String> =
                children.into_iter().map(|c| Receiver::<String>::new(c).recv().block().expect("an answer")).collect();
            ips.sort();
            ips.dedup();
            println!("ips: {}", ips.join(","));
        }
        // A supervised worker that runs until the job is stopped; each life says
        // where it runs and its OS pid.
        "supervised" | "partitionable" => {
            let worker = Child::new(
                "worker",
                Resources { mem: Mem::GIB, ..Resources::default() },
                FnOnce!(|_supervisor: Pid| {
                    println!("worker on {} os {}", pid().addr().ip(), std::process::id());
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }),
            );
            let _supervisor = Supervisor::new(OneForOne)
                .intensity(5, Duration::from_secs(60))
                .child(worker)
                .spawn(if partitionable { big } else { Resources::default() })
                .block()
                .expect("spawning the supervisor");
            println!("top on {}", ip());
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // A round-robin fan-out of `N` inputs, each taking `MS` milliseconds,
        // retried when lost; says where the inputs ran and whether all came back.
        "fanout" => {
            let (count, ms) = (number(1), number(2));
            println!("fanout started");
            let results = Fanout::new(
                Resources::default(),
                Fn!(move |input: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    (input * 2, pid().addr().ip().to_string())
                }),
            )
            .placement(Placement::RoundRobin)
            .concurrency(6)
            .retries(3)
            .run((0..count).collect())
            .block();
            let mut ips: Vec<String> =
                results.iter().filter_map(|r| r.as_ref().ok()).map(|(_, ip)| ip.clone()).collect();
            ips.sort();
            ips.dedup();
            let right = results.iter().enumerate().filter(|(i, r)| matches!(r, Ok((v, _)) if *v == 2 * *i as u64));
            println!("results: {} of {count} right", right.count());
            for (i, result) in
                results.iter().enumerate().filter(|(i, r)| !matches!(r, Ok((v, _)) if *v == 2 * *i as u64))
            {
                println!("wrong: input {i}: {result:?}");
            }
            println!("ips: {}", ips.join(","));
        }
        // A child with a fifth of a core spins for 1.5 s and says how much CPU
        // time it got.
        "spin" => {
            let child = spawn(
                Resources { cpu: Cpu::from_cores(0.2), ..Resources::default() },
                FnOnce!(|parent: Pid| {
                    let started = std::time::Instant::now();
                    let mut x = 0u64;
                    while started.elapsed() < Duration::from_millis(1500) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
                    let fields: Vec<u64> = stat
                        .rsplit(')')
                        .next()
                        .unwrap()
                        .split_whitespace()
                        .skip(11)
                        .take(2)
                        .map(|f| f.parse().unwrap())
                        .collect();
                    // SAFETY: sysconf takes a plain integer.
                    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                    Sender::<u64>::new(parent).send((fields[0] + fields[1]) * 1000 / ticks).block();
                }),
            )
            .block()
            .expect("spawning the child");
            println!("cpu ms: {}", Receiver::<u64>::new(child).recv().block().expect("the child's answer"));
        }
        // A child whose closure holds `MIB` of data says how much it got.
        "big_closure" => {
            let data = vec![7u8; (number(1) << 20) as usize];
            let child = spawn(
                Resources::default(),
                FnOnce!(move |parent: Pid| Sender::<usize>::new(parent).send(data.len()).block()),
            )
            .block()
            .expect("spawning the child");
            println!("the child got {} bytes", Receiver::<usize>::new(child).recv().block().expect("an answer"));
        }
        // How many processes of `MIB` the job's machines hold.
        "capacity" => {
            println!("capacity: {}", capacity(Resources { mem: number(1) * Mem::MIB, ..Resources::default() }))
        }
        // `N` children that sleep `MS` ms and end; says when all have started.
        "sleepy_children" => {
            let children: Vec<Pid> = (0..number(1))
                .map(|_| {
                    let ms = number(2);
                    let resources = Resources { mem: 16 * Mem::MIB, ..Resources::default() };
                    spawn(resources, FnOnce!(move |_parent: Pid| std::thread::sleep(Duration::from_millis(ms))))
                        .block()
                        .expect("spawning a child")
                })
                .collect();
            println!("spawned {}", children.len());
            for child in children {
                let _ = Receiver::<()>::new(child).recv().block();
            }
        }
        // Exits with code `N` after a child has run.
        "exit" => {
            let child = spawn(Resources::default(), FnOnce!(|_parent: Pid| println!("child ran")))
                .block()
                .expect("spawning the child");
            let _ = Receiver::<()>::new(child).recv().block();
            std::process::exit(number(1) as i32);
        }
        other => panic!("no scenario {other:?}"),
    }
}
