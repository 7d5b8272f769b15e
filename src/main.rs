//! The `laquant` command line: parses arguments, calls the library, prints.

fn main() {
    println!("laquant {}", env!("CARGO_PKG_VERSION"));
}
