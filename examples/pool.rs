//! A pool of four worker processes running 100 small tasks; one task panics, its
//! worker is replaced, and the others carry on.
use constellation::*;

fn main() {
    init(Resources::default());
    let pool = Pool::new(4, Resources { mem: 20 * Mem::MIB, ..Resources::default() });
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            pool.run(FnOnce!(move || {
                if i == 42 {
                    panic!("task {i} does not like its number");
                }
                i * i
            }))
        })
        .collect();
    let results = futures::future::join_all(tasks).block();
    let sum: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    println!("99 tasks succeeded, summing to {sum}");
    println!("task 42: {}", results[42].as_ref().expect_err("task 42 panics"));
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    // The pool keeps working after losing a worker.
    println!("afterwards: {:?}", pool.run(FnOnce!(|| "still here".to_string())).block());
}
