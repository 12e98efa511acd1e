//! `kiln run --gdb`: the guest starts stopped with QEMU's gdb stub, `kiln`
//! prints the gdb command, and Debian's gdb, in batch mode, stops at the
//! app's `main` (the symbol the link crate keeps for it) and reads a
//! backtrace through the kernel from the ELF kept beside the image.

mod support;

use std::process::{Command, Stdio};

#[test]
fn gdb_stops_at_main_and_reads_a_backtrace() {
    let (code, _, err) = support::kiln(&["build", "-q", "apps/helloworld"]);
    assert_eq!(code, 0, "{err}");
    let elf = support::root().join("apps/helloworld/.kiln/build/helloworld_qemu-x86_64.elf");
    assert!(
        elf.is_file(),
        "the ELF with symbols is kept beside the image"
    );
    let port = support::free_port().to_string();
    let mut guest = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(support::root())
        .args([
            "run",
            "-q",
            "--timeout",
            "120",
            &format!("--gdb={port}"),
            "apps/helloworld",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = support::read_in_background(guest.stderr.take().unwrap());
    let out = support::read_in_background(guest.stdout.take().unwrap());
    // gdb retries the connection until QEMU listens.
    let g = Command::new("timeout")
        .args(["90", "gdb", "-batch", "-nx"])
        .args([
            "-ex",
            "set tcp connect-timeout 60",
            "-ex",
            "set backtrace past-main on",
        ])
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")])
        .args([
            "-ex",
            "break main",
            "-ex",
            "continue",
            "-ex",
            "bt",
            "-ex",
            "kill",
        ])
        .arg(&elf)
        .output()
        .expect("gdb (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&g.stderr)
    );
    let _ = guest.wait();
    let (err, out) = (err.join().unwrap(), out.join().unwrap());
    assert!(err.contains(&format!("gdb -ex 'target remote localhost:{port}' -ex 'break main' -ex continue apps/helloworld/.kiln/build/helloworld_qemu-x86_64.elf")), "{err}");
    assert!(
        text.contains("Breakpoint 1, main () at src/main.rs"),
        "{text}\n{err}"
    );
    for frame in [
        "#1 ",
        " in start () at src/lib.rs",
        " in kiln_start () at src/main.rs",
        " in kiln_plat_main () at src/x86.rs",
    ] {
        assert!(
            text.contains(frame),
            "no '{frame}' in the backtrace:\n{text}"
        );
    }
    // Stopped at main's first line: the app printed nothing yet.
    assert!(!out.contains("Hello, world!"), "{out}");
}
