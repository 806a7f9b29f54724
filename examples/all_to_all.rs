//! All-to-all: N processes each send their index to every other process, and each
//! checks it heard from all of them.
//!
//! `cargo run --example all_to_all -- 10`
use constellation::*;

fn main() {
    init(Resources::default());
    let n: usize = std::env::args().nth(1).map_or(10, |arg| arg.parse().expect("usage: all_to_all [N]"));
    let members: Vec<Pid> = (0..n)
        .map(|index| {
            spawn(
                Resources { mem: 20 * Mem::MIB, ..Resources::default() },
                FnOnce!(move |parent: Pid| {
                    // Learn who the others are, then talk to every one of them.
                    let everyone = Receiver::<Vec<Pid>>::new(parent).recv().block().expect("no roster");
                    let others: Vec<Pid> = everyone.iter().copied().filter(|&p| p != pid()).collect();
                    let senders: Vec<_> = others.iter().map(|&p| Sender::<usize>::new(p)).collect();
                    let receivers: Vec<_> = others.iter().map(|&p| Receiver::<usize>::new(p)).collect();
                    for sender in &senders {
                        sender.send(index).block();
                    }
                    let mut heard: usize = receivers.iter().map(|r| r.recv().block().expect("a peer died")).sum();
                    heard += index;
                    Sender::<usize>::new(parent).send(heard).block();
                }),
            )
            .block()
            .expect("spawn failed")
        })
        .collect();
    for &member in &members {
        Sender::<Vec<Pid>>::new(member).send(members.clone()).block();
    }
    let expected = n * (n - 1) / 2;
    for &member in &members {
        let sum = Receiver::<usize>::new(member).recv().block().expect("a member died");
        assert_eq!(sum, expected, "{member} heard from only some of the others");
    }
    println!("all {n} processes heard from all {} others (index sum {expected})", n - 1);
}
