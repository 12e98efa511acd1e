//! Starting other programs the way Linux programs do (Rust's
//! std::process::Command, which musl's posix_spawn carries out with
//! clone(CLONE_VM|CLONE_VFORK) and execve), for Kiln's tests: `run` starts
//! linux-hello with its output captured, a two-stage pipeline, a program
//! that does not exist, and checks its own descriptors and memory after;
//! `count` counts the lines on its input; `ids` prints its pid and parent's.
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "count" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).unwrap();
            println!("count: {} lines", s.lines().count());
        }
        "ids" => {
            // SAFETY: plain libc calls.
            let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
            println!("ids: pid {pid}, parent {ppid}");
            std::process::exit(5);
        }
        _ => run(),
    }
}

fn run() {
    // A file opened before: the children's descriptors are their own.
    let mut keep = std::fs::File::create("/tmp/kept").unwrap();
    let heap: Vec<u64> = (0..100_000).collect();
    let out = Command::new("/bin/hello")
        .args(["from", "a child"])
        .env("GREETING", "hello, child")
        .output()
        .expect("spawn /bin/hello");
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "spawn: hello exited {:?} and said {:?}",
        out.status.code(),
        text.lines().next().unwrap_or("")
    );
    println!("spawn: its greeting {}", text.contains("GREETING=hello, child"));
    let ids = Command::new("/bin/spawn").arg("ids").output().unwrap();
    print!("spawn: {}", String::from_utf8_lossy(&ids.stdout));
    println!("spawn: ids exited {:?}; my pid {}", ids.status.code(), std::process::id());
    // hello | spawn count
    let mut first = Command::new("/bin/hello")
        .arg("piped")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let second = Command::new("/bin/spawn")
        .arg("count")
        .stdin(first.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let counted = second.wait_with_output().unwrap();
    let first_status = first.wait().unwrap();
    print!("spawn: pipeline: {}", String::from_utf8_lossy(&counted.stdout));
    println!("spawn: first stage exited {:?}", first_status.code());
    match Command::new("/bin/nowhere").status() {
        Ok(s) => println!("spawn: nowhere ran? {s:?}"),
        Err(e) => println!("spawn: nowhere: {:?}", e.kind()),
    }
    keep.write_all(b"still mine\n").unwrap();
    drop(keep);
    let sum: u64 = heap.iter().sum();
    println!(
        "spawn: after: file {:?}, heap sum {sum}",
        std::fs::read_to_string("/tmp/kept").unwrap()
    );
}
