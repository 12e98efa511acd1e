//! An ordinary Linux program (std, musl, static-pie): prints its arguments
//! and an environment variable, reads a file, writes and reads one back,
//! and exits with a code of its own.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("linux-hello: {} argument(s): {:?}", args.len(), args);
    println!("GREETING={}", std::env::var("GREETING").unwrap_or_else(|_| "(unset)".into()));
    match std::fs::read_to_string("/etc/motd") {
        Ok(s) => print!("motd: {s}"),
        Err(e) => println!("motd: {e}"),
    }
    let mut v: Vec<u64> = (1..=1000).collect();
    v.retain(|x| x % 3 == 0);
    println!("sum of multiples of 3: {}", v.iter().sum::<u64>());
    std::io::stdout().flush().unwrap();
    std::process::exit(args.len() as i32 + 40);
}
