//! Hello, world: the top process spawns one child, which greets its parent.
use constellation::*;

fn main() {
    init(Resources::default());
    println!("Hello, world! I am the top process, {}.", pid());
    let child = spawn(
        Resources::default(),
        FnOnce!(move |parent: Pid| {
            println!("Hello from {}, spawned by {parent}.", pid());
            Sender::<String>::new(parent).send(format!("greetings from {}", pid())).block();
        }),
    )
    .block()
    .expect("spawn failed");
    let greeting = Receiver::<String>::new(child).recv().block().expect("the child ended without a word");
    println!("The child sent: {greeting}");
}
