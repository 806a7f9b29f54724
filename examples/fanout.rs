//! Fan-out: map a function over 1,000 inputs, each in its own process, at most
//! 16 at a time; the results come back in input order.
use constellation::*;

fn collatz_steps(mut n: u64) -> u64 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() {
    init(Resources::default());
    let inputs: Vec<u64> = (1..=1000).collect();
    let small = Resources { mem: 20 * Mem::MIB, ..Resources::default() };
    let steps: Vec<u64> = Fanout::new(small, Fn!(|n: u64| collatz_steps(n)))
        .concurrency(16)
        .run(inputs)
        .block()
        .into_iter()
        .map(|r| r.expect("a job failed"))
        .collect();
    let (longest, n) = steps.iter().zip(1..).max().expect("inputs");
    println!("of 1..=1000, {n} takes the most Collatz steps: {longest}");
    assert_eq!(steps[26], 111, "27 takes 111 steps");
}
