//! Jobs: square two numbers in two remote processes, and combine the results.
//!
//! `cargo run --example pythagorean -- 3 4` prints `hypotenuse of 3 and 4 = 5`.
use constellation::*;

fn main() {
    init(Resources::default());
    let mut args = std::env::args().skip(1).map(|a| a.parse::<f64>().expect("usage: pythagorean A B"));
    let (a, b) = (args.next().unwrap_or(3.0), args.next().unwrap_or(4.0));
    let a_squared = job(Resources::default(), FnOnce!(move || a * a));
    let b_squared = job(Resources::default(), FnOnce!(move || b * b));
    let (a_squared, b_squared) = futures::future::join(a_squared, b_squared).block();
    let hypotenuse = (a_squared.expect("squaring a") + b_squared.expect("squaring b")).sqrt();
    println!("hypotenuse of {a} and {b} = {hypotenuse}");
}
