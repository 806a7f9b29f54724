//! Fork–join: split a sum over 1..=N across processes, then join the parts.
//!
//! `cargo run --example fork_join -- 8`
use constellation::*;

const N: u64 = 10_000_000;

fn main() {
    init(Resources::default());
    let parts: u64 = std::env::args().nth(1).map_or(8, |arg| arg.parse().expect("usage: fork_join [PARTS]"));
    let chunk = N / parts;
    let children: Vec<Pid> = (0..parts)
        .map(|part| {
            let (from, to) = (part * chunk + 1, if part + 1 == parts { N } else { (part + 1) * chunk });
            spawn(
                Resources { mem: 20 * Mem::MIB, ..Resources::default() },
                FnOnce!(move |parent: Pid| {
                    let sum: u64 = (from..=to).sum();
                    Sender::<u64>::new(parent).send(sum).block();
                }),
            )
            .block()
            .expect("spawn failed")
        })
        .collect();
    let total: u64 = children.iter().map(|&c| Receiver::<u64>::new(c).recv().block().expect("a part failed")).sum();
    println!("sum of 1..={N} over {parts} processes = {total}");
    assert_eq!(total, N * (N + 1) / 2);
}
