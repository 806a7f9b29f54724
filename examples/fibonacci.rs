//! The classic: compute Fibonacci numbers by spawning two processes per call.
//!
//! `cargo run --release --example fibonacci -- 10` spawns 176 processes.
use constellation::*;

fn fibonacci(x: usize) -> usize {
    if x <= 1 {
        return x;
    }
    let left_pid = spawn(
        Resources { mem: 20 * Mem::MIB, ..Resources::default() },
        FnOnce!(move |parent_pid| { Sender::<usize>::new(parent_pid).send(fibonacci(x - 1)).block() }),
    )
    .block()
    .unwrap();
    let right_pid = spawn(
        Resources { mem: 20 * Mem::MIB, ..Resources::default() },
        FnOnce!(move |parent_pid| { Sender::<usize>::new(parent_pid).send(fibonacci(x - 2)).block() }),
    )
    .block()
    .unwrap();
    Receiver::<usize>::new(left_pid).recv().block().unwrap() + Receiver::<usize>::new(right_pid).recv().block().unwrap()
}

fn main() {
    init(Resources::default());
    let n = std::env::args().nth(1).map_or(10, |arg| arg.parse().expect("usage: fibonacci [N]"));
    println!("fibonacci({n}) = {}", fibonacci(n));
}
