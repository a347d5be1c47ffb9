//! A component of the `wasi:cli/command` world: it exports `wasi:cli/run`,
//! not partyhost's handlers, so a host must refuse it by name.

fn main() {
    println!("hello from the wrong world");
}
