//! A pipeline: numbers flow through a chain of processes, each applying one
//! stage, and the last one sends the total back.
//!
//! ```text
//! top ──numbers──▶ square ──squares──▶ sum ──total──▶ top
//! ```
use constellation::*;

fn small() -> Resources {
    Resources { mem: 20 * Mem::MIB, ..Resources::default() }
}

fn main() {
    init(Resources::default());
    // The last stage first, so each stage knows where to send.
    let sum = spawn(
        small(),
        FnOnce!(|top: Pid| {
            let squares = Receiver::<Option<u64>>::new(Receiver::<Pid>::new(top).recv().block().unwrap());
            let mut total = 0;
            while let Some(square) = squares.recv().block().expect("the square stage ended early") {
                total += square;
            }
            Sender::<u64>::new(top).send(total).block();
        }),
    )
    .block()
    .expect("spawning the sum stage");
    let square = spawn(
        small(),
        FnOnce!(move |top: Pid| {
            let numbers = Receiver::<Option<u64>>::new(top);
            let squares = Sender::<Option<u64>>::new(sum);
            while let Some(n) = numbers.recv().block().expect("the top process ended early") {
                squares.send(Some(n * n)).block();
            }
            squares.send(None).block();
        }),
    )
    .block()
    .expect("spawning the square stage");
    // Tell the sum stage where its input comes from, then feed the pipeline.
    Sender::<Pid>::new(sum).send(square).block();
    let numbers = Sender::<Option<u64>>::new(square);
    for n in 1..=1000 {
        numbers.send(Some(n)).block();
    }
    numbers.send(None).block();
    let total = Receiver::<u64>::new(sum).recv().block().expect("the sum stage ended early");
    println!("sum of squares of 1..=1000 = {total}");
    assert_eq!(total, 333_833_500);
}
