//! A supervision tree that keeps a small system running while part of it crashes.
//!
//! ```text
//! top supervisor (rest_for_one)
//! ├── store          registered as "store": a key-value server behind a mailbox
//! └── workers        supervisor (one_for_one)
//!     ├── counter-1  increments a key in the store 10 times
//!     └── counter-2  the same, but trips on its third update in its first two lives
//! ```
//!
//! Workers find the store by name, so they reach the current incarnation whatever
//! restarts happened. The output shows each start, crash and restart; the program
//! ends once both counters have finished, shutting the tree down.
use constellation::*;
use constellation_supervisor::*;
use std::{collections::HashMap, time::Duration};

/// A request to the store: add `delta` to `key` and answer with the new value.
type Update = (String, i64);

fn small() -> Resources {
    Resources { mem: 30 * Mem::MIB, ..Resources::default() }
}

// ANCHOR: store
fn store() {
    let requests = Mailbox::<Update>::open("requests");
    let mut values: HashMap<String, i64> = HashMap::new();
    loop {
        let Ok((from, (key, delta))) = requests.recv().block() else { return };
        let value = values.entry(key).or_insert(0);
        *value += delta;
        Sender::<i64>::to_mailbox(from, "answers").send(*value).block();
    }
}
// ANCHOR_END: store

/// Sends an update to whichever process is the store now, and waits for the answer.
fn update(answers: &Mailbox<i64>, key: &str, delta: i64) -> i64 {
    Sender::<Update>::to_registered("store", "requests").send((key.to_owned(), delta)).block();
    answers.recv().block().expect("the store answers").1
}

fn counter(name: &str, trips: bool) {
    let answers = Mailbox::<i64>::open("answers");
    let life = update(&answers, &format!("{name} lives"), 1);
    println!("{name}: life {life}");
    for i in 1..=10 {
        if trips && life <= 2 && i == 3 {
            panic!("{name} tripped on update {i}");
        }
        update(&answers, name, 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    update(&answers, "finished", 1);
    println!("{name}: done");
}

fn main() {
    init(Resources::default());
    let workers = Supervisor::new(OneForOne)
        .intensity(5, Duration::from_secs(10))
        .child(
            Child::new("counter-1", small(), Fn!(|_sup: Pid| counter("counter-1", false))).restart(Restart::Transient),
        )
        .child(
            Child::new("counter-2", small(), Fn!(|_sup: Pid| counter("counter-2", true))).restart(Restart::Transient),
        );
    let tree = Supervisor::new(RestForOne)
        .intensity(3, Duration::from_secs(10))
        .child(Child::new("store", small(), Fn!(|_sup: Pid| store())).register("store"))
        .child(Child::supervisor("workers", workers).restart(Restart::Transient))
        .spawn(small())
        .block()
        .expect("starting the tree");

    // Wait until both counters have finished, asking the store like any client.
    let answers = Mailbox::<i64>::open("answers");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if whereis("store").is_some() && update(&answers, "finished", 0) == 2 {
            break;
        }
    }
    let totals = (update(&answers, "counter-1", 0), update(&answers, "counter-2", 0));
    println!("counter-1 counted {}, counter-2 counted {} (including lives cut short)", totals.0, totals.1);
    let down = monitor(tree);
    shutdown(tree, Duration::from_secs(10));
    down.block();
}
