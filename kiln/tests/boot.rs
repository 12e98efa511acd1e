//! Boot tests: build real kernels with `kiln build`, boot them in QEMU with
//! `kiln run`, and check what the guest prints and how it exits, the way a
//! user would see it. Every run has a time limit, so a hanging guest fails
//! the test instead of stalling the suite.

mod support;
use support::root;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root());
    c.stdin(Stdio::null());
    c
}

/// Runs a command, killing it after `limit`.
fn run_with_limit(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for kiln"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!(
                "command did not finish within {limit:?} (started {:?} ago): {c:?}",
                start.elapsed()
            );
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn output(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Builds each app once per test process (tests share the result).
fn built(app: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let done = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut done = done.lock().unwrap();
    let kernel = root()
        .join("apps")
        .join(app)
        .join(".kiln/build")
        .join(format!("{app}_qemu-x86_64"));
    if !done.iter().any(|a| a == app) {
        let mut c = kiln();
        c.args(["build", &format!("apps/{app}")]);
        let r = output(run_with_limit(c, Duration::from_secs(900)));
        assert_eq!(
            r.code, 0,
            "kiln build apps/{app} failed:\n{}{}",
            r.stdout, r.stderr
        );
        assert!(
            r.stderr.contains("[4/4] Kernel"),
            "build steps not shown:\n{}",
            r.stderr
        );
        done.push(app.to_string());
    }
    kernel
}

/// `kiln run <extra> apps/<app> -- <args>` with a guest timeout.
fn boot(app: &str, extra: &[&str], args: &[&str]) -> Run {
    built(app);
    let mut c = kiln();
    c.args(["run", "--timeout", "60"])
        .args(extra)
        .arg(format!("apps/{app}"));
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    output(run_with_limit(c, Duration::from_secs(120)))
}

#[test]
fn helloworld_prints_greeting_and_arguments() {
    let r = boot("helloworld", &[], &["a", "b", "two words"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let hello = lines
        .iter()
        .position(|l| *l == "Hello, world!")
        .unwrap_or_else(|| panic!("no greeting:\n{}", r.stdout));
    assert_eq!(
        &lines[hello + 1..],
        ["arg 1: a", "arg 2: b", "arg 3: two words"]
    );
    assert!(
        r.stdout.contains("kiln: helloworld on qemu/x86_64"),
        "boot banner missing:\n{}",
        r.stdout
    );
}

#[test]
fn helloworld_kernel_is_an_elf64_with_a_pvh_note() {
    let k = built("helloworld");
    let b = std::fs::read(&k).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!(b[4], 2, "not ELF64");
    assert_eq!(u16::from_le_bytes([b[18], b[19]]), 0x3e, "not x86_64");
    // Walk the program headers to the PT_NOTE and find XEN_ELFNOTE_PHYS32_ENTRY.
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (
        u16::from_le_bytes([b[54], b[55]]) as usize,
        u16::from_le_bytes([b[56], b[57]]) as usize,
    );
    let mut found = false;
    for i in 0..phnum {
        let ph = &b[phoff + i * phentsize..];
        if u32::from_le_bytes(ph[0..4].try_into().unwrap()) == 4 {
            let off = u64::from_le_bytes(ph[8..16].try_into().unwrap()) as usize;
            let n = &b[off..];
            let (namesz, descsz, ty) = (
                u32::from_le_bytes(n[0..4].try_into().unwrap()),
                u32::from_le_bytes(n[4..8].try_into().unwrap()),
                u32::from_le_bytes(n[8..12].try_into().unwrap()),
            );
            found |= namesz == 4 && descsz == 4 && ty == 18 && &n[12..16] == b"Xen\0";
        }
    }
    assert!(found, "no PVH entry note in {}", k.display());
}

#[test]
fn quiet_run_shows_only_the_app() {
    let r = boot("helloworld", &["-q"], &[]);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout.trim_end(), "Hello, world!");
    assert!(
        !r.stderr.contains("[1/4]"),
        "quiet build still printed steps:\n{}",
        r.stderr
    );
}

#[test]
fn kraftfile_cmd_is_the_default_argument_list() {
    // crashtest's Kraftfile has no cmd: with no args it reports an unknown request.
    let r = boot("crashtest", &["-q"], &[]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("unknown request ''"));
}

#[test]
fn app_return_value_is_the_exit_status() {
    for code in ["0", "3", "42", "126"] {
        let r = boot("crashtest", &["-q"], &["exit", code]);
        assert_eq!(r.code.to_string(), code, "{}{}", r.stdout, r.stderr);
    }
    let r = boot("crashtest", &["-q"], &["process-exit", "7"]);
    assert_eq!(r.code, 7);
    let r = boot("crashtest", &["-q"], &["exit", "500"]);
    assert_eq!(r.code, 126);
    assert!(
        r.stdout.contains("exit code 500 is outside 0..=126"),
        "{}",
        r.stdout
    );
}

#[test]
fn panic_prints_message_and_location() {
    let r = boot("crashtest", &["-q"], &["panic"]);
    assert_eq!(r.code, 101, "{}", r.stdout);
    assert!(r.stdout.contains("kiln: panic at "), "{}", r.stdout);
    assert!(r.stdout.contains("crashtest/src/lib.rs:"), "{}", r.stdout);
    assert!(
        r.stdout.contains(": crashtest was asked to panic"),
        "{}",
        r.stdout
    );
    // A backtrace, named by kiln run: the app's main, then the boot path.
    let trace = backtrace(&r.stdout);
    assert!(trace[0].starts_with("core::panicking::panic"), "{trace:?}");
    let main = trace
        .iter()
        .position(|f| f.starts_with("main at apps/crashtest/src/lib.rs:35"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        trace[main + 1].starts_with("start at lib/boot/src/lib.rs:"),
        "{trace:?}"
    );
}

/// The functions of the backtrace after a panic or fault report, as
/// `kiln run` names them (`      in NAME at FILE:LINE` under each address).
pub fn backtrace(out: &str) -> Vec<String> {
    let lines: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("kiln: backtrace, most recent call first:"))
        .collect();
    assert!(!lines.is_empty(), "no backtrace in:\n{out}");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("      in "))
        .map(String::from)
        .collect()
}

fn hex_field(out: &str, name: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no {name}:\n{out}"));
    let v = line
        .split("0x")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    u64::from_str_radix(v, 16).unwrap()
}

#[test]
fn null_dereference_reports_a_page_fault() {
    let r = boot("crashtest", &["-q"], &["null"]);
    assert_eq!(r.code, 125, "{}", r.stdout);
    assert!(
        r.stdout.contains("kiln: CPU exception 14 (#PF page fault)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("page not present, read"), "{}", r.stdout);
    assert_eq!(hex_field(&r.stdout, "fault address"), 0);
    assert_eq!(hex_field(&r.stdout, "error code"), 0);
    let rip = hex_field(&r.stdout, "instruction pointer");
    assert!(
        (0x10_0000..0x20_0000).contains(&rip),
        "rip {rip:#x} outside the kernel text"
    );
    assert!(r.stdout.contains("likely cause: null pointer dereference"));
    // kiln run names the function and line from the ELF beside the image.
    let named = r
        .stdout
        .lines()
        .find(|l| l.starts_with("  in "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        named.contains("main at apps/crashtest/src/lib.rs:45"),
        "{named}"
    );
    // Its callers: the boot path that called main.
    let trace = backtrace(&r.stdout);
    assert!(
        trace[0].starts_with("start at lib/boot/src/lib.rs:"),
        "{trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|f| f.starts_with("kiln_plat_main at plat/qemu/src/x86.rs:")),
        "{trace:?}"
    );

    let r = boot("crashtest", &["-q"], &["write-null"]);
    assert_eq!(r.code, 125);
    assert_eq!(hex_field(&r.stdout, "fault address"), 0x80);
    assert_eq!(
        hex_field(&r.stdout, "error code"),
        2,
        "write to a missing page"
    );
}

#[test]
fn invalid_instruction_and_stack_overflow_are_reported() {
    let r = boot("crashtest", &["-q"], &["ud"]);
    assert_eq!(r.code, 125, "{}", r.stdout);
    assert!(
        r.stdout.contains("CPU exception 6 (#UD invalid opcode)"),
        "{}",
        r.stdout
    );
    let r = boot("crashtest", &["-q"], &["overflow"]);
    assert_eq!(r.code, 125, "{}", r.stdout);
    assert!(r.stdout.contains("CPU exception 14"), "{}", r.stdout);
    assert!(
        r.stdout.contains("stack overflow (hit the guard page"),
        "{}",
        r.stdout
    );
}

#[test]
fn kernel_memory_is_write_xor_execute() {
    for (what, code, cause) in [
        (
            "write-text",
            "0x3 (protection violation, write)",
            "write to read-only memory (kernel code or constants: W^X)",
        ),
        (
            "write-rodata",
            "0x3 (protection violation, write)",
            "write to read-only memory (kernel code or constants: W^X)",
        ),
        (
            "exec-heap",
            "0x11 (protection violation, read, instruction fetch)",
            "jump into memory that is not executable",
        ),
        (
            "exec-stack",
            "0x11 (protection violation, read, instruction fetch)",
            "jump into memory that is not executable",
        ),
    ] {
        let r = boot("crashtest", &["-q"], &[what]);
        assert_eq!(r.code, 125, "{what}: {}", r.stdout);
        assert!(
            r.stdout.contains("CPU exception 14 (#PF page fault)"),
            "{what}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!("error code {code}")),
            "{what}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!("likely cause: {cause}")),
            "{what}: {}",
            r.stdout
        );
        if what.starts_with("exec") {
            // The fault is at the very instruction the CPU refused to fetch.
            assert_eq!(
                hex_field(&r.stdout, "fault address"),
                hex_field(&r.stdout, "instruction pointer"),
                "{what}"
            );
        }
    }
}

#[test]
fn out_of_memory_is_reported_with_the_request_and_statistics() {
    let r = boot("crashtest", &["-q"], &["oom"]);
    assert_eq!(r.code, 101, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("kiln: out of memory: 1099511627776 bytes (align 1) from the tlsf heap;"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("KiB total") && r.stdout.contains("1 failed"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("kiln: panic at"), "{}", r.stdout);
}

#[test]
fn idle_sleeps_on_the_apic_timer() {
    // 300 sleeps of 1 ms: each halts the CPU until the local APIC timer's
    // interrupt wakes it (a missing interrupt would hang until the timeout).
    let r = boot("crashtest", &["-q"], &["idle"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let us: u64 = r
        .stdout
        .split("idled ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        (300_000..30_000_000).contains(&us),
        "300 idles of 1 ms took {us} us"
    );
}

#[test]
fn large_memory_is_mapped_and_used() {
    // 4 GiB: RAM below and above the 4 GiB hole, all of it in the heap.
    let r = boot("helloworld", &["-M", "4G"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let total: u64 = r
        .stdout
        .split("heap tlsf (")
        .nth(1)
        .and_then(|s| s.split(" KiB total").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        total > 4_000_000,
        "only {total} KiB of heap with 4 GiB of RAM"
    );
    assert!(r.stdout.contains("Hello, world!"));
}

#[test]
fn a_hanging_guest_is_stopped_by_the_timeout() {
    built("crashtest");
    let mut c = kiln();
    c.args([
        "run",
        "-q",
        "--timeout",
        "2",
        "apps/crashtest",
        "--",
        "hang",
    ]);
    let start = Instant::now();
    let r = output(run_with_limit(c, Duration::from_secs(60)));
    assert_eq!(r.code, 124, "{}{}", r.stdout, r.stderr);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(
        r.stderr.contains("did not finish within 2s"),
        "{}",
        r.stderr
    );
}

#[test]
fn environment_reaches_the_app() {
    let r = boot(
        "crashtest",
        &["-q", "-e", "GREETING=hello there"],
        &["env", "GREETING"],
    );
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("GREETING=hello there"), "{}", r.stdout);
}

/// `--accel`: auto avoids a KVM that emulates (PVM) and says so; kvm
/// insists on KVM; a bad value is refused.
#[test]
fn the_accelerator_is_chosen_and_explained() {
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let r = boot("helloworld", &[], &["auto"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let said_pvm = r.stderr.contains("this host's KVM is PVM (kvm_pvm)")
        && r.stderr.contains("using TCG emulation");
    assert_eq!(said_pvm, kvm && pvm, "{}", r.stderr);
    let banner = if kvm && !pvm { "KVM" } else { "TCG" };
    assert!(
        r.stderr.contains(&format!("(microvm, {banner}, ")),
        "{}",
        r.stderr
    );
    if kvm {
        let r = boot("helloworld", &["--accel", "kvm"], &["kvm"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("(microvm, KVM, ") && r.stdout.contains("arg 1: kvm"),
            "{}",
            r.stderr
        );
    } else {
        let r = boot("helloworld", &["--accel", "kvm"], &[]);
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("--accel kvm: KVM is unusable here"),
            "{}",
            r.stderr
        );
    }
    let r = boot("helloworld", &["--accel", "fast"], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("invalid value 'fast'"), "{}", r.stderr);
}

#[test]
fn tcg_and_q35_boot_too() {
    let r = boot("helloworld", &["-q", "-W"], &["tcg"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("arg 1: tcg"));
    let r = boot("helloworld", &["-q", "--machine", "q35"], &["q35"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("arg 1: q35"));
}

#[test]
fn small_memory_boots_and_bad_memory_is_rejected() {
    let r = boot("helloworld", &["-q", "-M", "4M"], &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = boot("helloworld", &["-q", "-M", "lots"], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("memory size 'lots'"), "{}", r.stderr);
}

fn temp_app(kraftfile: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("kiln-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("Kraftfile"), kraftfile).unwrap();
    d
}

fn kiln_error(args: &[&str]) -> String {
    let mut c = kiln();
    c.args(args);
    let r = output(run_with_limit(c, Duration::from_secs(60)));
    assert_eq!(
        r.code, 1,
        "expected an error from kiln {args:?}:\n{}{}",
        r.stdout, r.stderr
    );
    r.stderr
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = temp_app("");
    std::fs::remove_file(d.join("Kraftfile")).unwrap();
    let e = kiln_error(&["build", d.to_str().unwrap()]);
    assert!(e.contains("no Kraftfile here"), "{e}");

    let d = temp_app("name: broken\ntargets:\n  - qemu/x86_64\n  bad: [\n");
    let e = kiln_error(&["run", d.to_str().unwrap()]);
    assert!(
        e.contains(&format!(
            "{}:4: malformed Kraftfile",
            d.join("Kraftfile").display()
        )),
        "{e}"
    );

    let d = temp_app("name: riscy\ntargets:\n  - qemu/riscv64\n");
    let e = kiln_error(&["build", d.to_str().unwrap()]);
    assert!(
        e.contains("Kraftfile:3: unknown target 'qemu/riscv64'"),
        "{e}"
    );

    let e = kiln_error(&["build", "apps/helloworld", "--plat", "xen"]);
    assert!(e.contains("no target matches xen/*"), "{e}");
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    let mut c = kiln();
    c.env("PATH", "/nonexistent")
        .args(["run", "apps/helloworld"]);
    let r = output(run_with_limit(c, Duration::from_secs(60)));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("qemu-system-x86_64 not found in PATH"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("scripts/setup"), "{}", r.stderr);
}

#[test]
fn a_second_app_reuses_the_compiled_kernel_crates() {
    built("helloworld");
    // A copy of helloworld under another name is a new app for cargo.
    let d = std::env::temp_dir().join(format!("kiln-test-second-app-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::write(
        d.join("Kraftfile"),
        "spec: v0.6\nname: second\ntargets: [qemu/x86_64]\n",
    )
    .unwrap();
    let std_path = root().join("lib/std");
    std::fs::write(
        d.join("Cargo.toml"),
        format!("[package]\nname = \"second\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n[dependencies]\nkiln-std = {{ path = {:?} }}\n", std_path.display().to_string()),
    )
    .unwrap();
    std::fs::copy(
        root().join("apps/helloworld/src/lib.rs"),
        d.join("src/lib.rs"),
    )
    .unwrap();
    std::fs::copy(root().join("apps/helloworld/Kconfig"), d.join("Kconfig")).unwrap();
    let mut c = kiln();
    c.args(["run", "--timeout", "60", d.to_str().unwrap(), "--", "again"]);
    let r = output(run_with_limit(c, Duration::from_secs(600)));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("arg 1: again"), "{}", r.stdout);
    // Only the app, the link crate and its build script are new.
    let step = r.stderr.lines().find(|l| l.starts_with("[4/4]")).unwrap();
    let compiled: u32 = step
        .split("compiled ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        compiled <= 3,
        "a second app recompiled kernel crates: {step}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Sum of the loaded segment sizes of an ELF64 image (text, data and
/// rodata as loaded; page padding in the file does not count).
fn loaded_bytes(image: &Path) -> u64 {
    let b = std::fs::read(image).unwrap();
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (
        u16::from_le_bytes([b[54], b[55]]) as usize,
        u16::from_le_bytes([b[56], b[57]]) as usize,
    );
    (0..phnum)
        .map(|i| &b[phoff + i * phentsize..])
        .filter(|ph| u32::from_le_bytes(ph[0..4].try_into().unwrap()) == 1)
        .map(|ph| u64::from_le_bytes(ph[32..40].try_into().unwrap()))
        .sum()
}

/// An app folder whose Kraftfile points at helloworld's crate with extra Kconfig values.
fn configured_helloworld(name: &str, kconfig: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let app = root().join("apps/helloworld");
    std::fs::write(
        d.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: {name}\napp: {}\ntargets: [qemu/x86_64]\nkconfig:\n{kconfig}",
            app.display()
        ),
    )
    .unwrap();
    d
}

#[test]
fn kconfig_options_change_what_is_built_and_how_it_behaves() {
    let tlsf = built("helloworld");
    // The log level option: at 4 (debug) the kernel reports the app's exit.
    let d = configured_helloworld(
        "hello-debug",
        "  CONFIG_LIBCONSOLE_LOGLEVEL: 4\n  LIBBOOT_BANNER: n\n",
    );
    let mut c = kiln();
    c.args(["run", "--timeout", "60", d.to_str().unwrap()]);
    let r = output(run_with_limit(c, Duration::from_secs(600)));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("kiln: app exited with 0;"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("helloworld on qemu"),
        "banner still printed:\n{}",
        r.stdout
    );
    let cfg =
        std::fs::read_to_string(d.join(".kiln/build/hello-debug_qemu-x86_64.config")).unwrap();
    assert!(
        cfg.contains("CONFIG_LIBCONSOLE_LOGLEVEL=4\n")
            && cfg.contains("# CONFIG_LIBBOOT_BANNER is not set\n"),
        "{cfg}"
    );

    // The allocator choice: the region backend replaces TLSF, which is no longer compiled.
    let d = configured_helloworld("hello-region", "  - CONFIG_LIBALLOC_REGION=y\n");
    let mut c = kiln();
    c.args(["run", "--timeout", "60", d.to_str().unwrap()]);
    let r = output(run_with_limit(c, Duration::from_secs(600)));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("heap region"), "{}", r.stdout);
    let manifest =
        std::fs::read_to_string(d.join(".kiln/build/hello-region_qemu-x86_64.crate/Cargo.toml"))
            .unwrap();
    assert!(
        manifest.contains("kiln-alloc-region") && !manifest.contains("kiln-alloc-tlsf"),
        "{manifest}"
    );
    let region = d.join(".kiln/build/hello-region_qemu-x86_64");
    let (a, b) = (loaded_bytes(&tlsf), loaded_bytes(&region));
    assert!(
        b < a,
        "region kernel ({b} bytes loaded) is not smaller than the TLSF one ({a})"
    );
    // The link maps list every symbol in each image: TLSF's are gone.
    let tlsf_map = std::fs::read_to_string(tlsf.with_extension("map")).unwrap();
    let region_map = std::fs::read_to_string(region.with_extension("map")).unwrap();
    let has = |map: &str, what: &str| {
        map.lines().any(|l| {
            l.trim_start()
                .split_whitespace()
                .last()
                .is_some_and(|s| s.contains(what))
        })
    };
    assert!(
        has(&tlsf_map, "rlsf::tlsf::Tlsf"),
        "TLSF symbols missing from the TLSF kernel's map"
    );
    assert!(
        !has(&region_map, "rlsf"),
        "TLSF symbols left in the region kernel"
    );
    assert!(
        has(&region_map, "kiln_alloc..Heap"),
        "no heap symbols in the region kernel's map"
    );
}

#[test]
fn app_kconfig_options_reach_the_app() {
    let d = configured_helloworld(
        "hello-greeting",
        "  APP_HELLOWORLD_GREETING: \"Hi from Kconfig\"\n  APP_HELLOWORLD_REPEAT: 3\n  APP_HELLOWORLD_ARGS: n\n",
    );
    let mut c = kiln();
    c.args([
        "run",
        "-q",
        "--timeout",
        "60",
        d.to_str().unwrap(),
        "--",
        "a",
        "b",
    ]);
    let r = output(run_with_limit(c, Duration::from_secs(600)));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout.matches("Hi from Kconfig").count(),
        3,
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("Hello, world!") && !r.stdout.contains("arg 1"),
        "{}",
        r.stdout
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_kconfig_values_are_errors_with_file_and_line() {
    let d = configured_helloworld("hello-bad1", "  CONFIG_NOPE: y\n");
    let e = kiln_error(&["build", d.to_str().unwrap()]);
    assert!(
        e.contains(&format!(
            "{}:6: unknown Kconfig symbol NOPE",
            d.join("Kraftfile").display()
        )),
        "{e}"
    );
    let d = configured_helloworld("hello-bad2", "  - LIBCONSOLE_LOGLEVEL=loud\n");
    let e = kiln_error(&["build", d.to_str().unwrap()]);
    assert!(
        e.contains(
            "Kraftfile:6: LIBCONSOLE_LOGLEVEL=loud: wrong type: an int takes a decimal number"
        ),
        "{e}"
    );
    let d = configured_helloworld("hello-bad3", "  LIBCONSOLE_LOGLEVEL: 7\n");
    let e = kiln_error(&["build", d.to_str().unwrap()]);
    assert!(
        e.contains("LIBCONSOLE_LOGLEVEL=7 is outside its range 0..4"),
        "{e}"
    );
}

#[test]
fn kiln_config_sets_shows_and_resets_the_saved_config() {
    let d = configured_helloworld("hello-config", "  LIBBOOT_BANNER: y\n");
    let dir = d.to_str().unwrap();
    let cfg = |args: &[&str]| {
        let mut c = kiln();
        c.arg("config").arg(dir).args(args);
        output(run_with_limit(c, Duration::from_secs(60)))
    };
    let r = cfg(&[
        "--set",
        "CONFIG_LIBCONSOLE_LOGLEVEL=2",
        "--set",
        "LIBALLOC_REGION=y",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved = std::fs::read_to_string(d.join(".config")).unwrap();
    assert!(saved.contains("CONFIG_LIBCONSOLE_LOGLEVEL=2\n"), "{saved}");
    assert!(
        saved.contains("CONFIG_LIBALLOC_REGION=y\n")
            && saved.contains("# CONFIG_LIBALLOC_TLSF is not set\n"),
        "{saved}"
    );
    let r = cfg(&["--diff"]);
    assert!(
        r.stdout.contains("CONFIG_LIBCONSOLE_LOGLEVEL: 3 -> 2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("CONFIG_LIBALLOC_REGION: n -> y"),
        "{}",
        r.stdout
    );
    let r = cfg(&["--savedefconfig"]);
    // As `make savedefconfig`: the chosen member, not its unchosen sibling or
    // what it selects.
    assert_eq!(
        r.stdout,
        "CONFIG_LIBALLOC_REGION=y\nCONFIG_LIBCONSOLE_LOGLEVEL=2\n"
    );
    let r = cfg(&["--unset", "LIBCONSOLE_LOGLEVEL"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cfg(&["--show"]);
    assert!(
        r.stdout.contains("CONFIG_LIBCONSOLE_LOGLEVEL=3\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("CONFIG_LIBALLOC_REGION=y\n"),
        "{}",
        r.stdout
    );
    let r = cfg(&["--set", "LIBBOOT_BANNER=maybe"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("LIBBOOT_BANNER=maybe: wrong type: a bool takes y or n"),
        "{}",
        r.stderr
    );
    // A saved .config line that is not CONFIG_X=v names the file and line.
    std::fs::write(d.join(".config"), "CONFIG_LIBBOOT=y\ngarbage\n").unwrap();
    let r = cfg(&["--show"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(".config:2: expected CONFIG_NAME=value, found 'garbage'"),
        "{}",
        r.stderr
    );
}

/// How many crates a `kiln build` compiled (from its last step line; a
/// kernel Kiln knows is up to date compiled none).
fn compiled_crates(stderr: &str) -> u32 {
    let step = stderr
        .lines()
        .find(|l| l.starts_with("[4/4]"))
        .unwrap_or_else(|| panic!("no final step:\n{stderr}"));
    if step.ends_with("; up to date)") {
        return 0;
    }
    step.split("compiled ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn build_recompiles_exactly_when_the_configuration_changes() {
    let d = configured_helloworld("hello-rebuild", "  LIBBOOT_BANNER: y\n");
    let dir = d.to_str().unwrap();
    let build = || {
        let mut c = kiln();
        c.args(["build", dir]);
        let r = output(run_with_limit(c, Duration::from_secs(600)));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stderr
    };
    let config = d.join(".kiln/build/hello-rebuild_qemu-x86_64.config");
    build();
    let first = std::fs::read_to_string(&config).unwrap();
    // Nothing changed: Kiln knows from its record of the inputs, without
    // asking cargo.
    let again = build();
    assert!(
        again
            .lines()
            .any(|l| l.starts_with("[4/4]") && l.ends_with("; up to date)")),
        "{again}"
    );
    assert_eq!(
        compiled_crates(&again),
        0,
        "nothing changed, yet the kernel was recompiled"
    );
    // An edited input goes to cargo again.
    let kraftfile = d.join("Kraftfile");
    let text = std::fs::read_to_string(&kraftfile).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&kraftfile, format!("{text}# edited\n")).unwrap();
    assert!(
        !build().contains("; up to date)"),
        "an edited Kraftfile was taken as up to date"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), first);

    let mut c = kiln();
    c.args(["config", dir, "--set", "LIBCONSOLE_LOGLEVEL=1"]);
    assert_eq!(output(run_with_limit(c, Duration::from_secs(60))).code, 0);
    let n = compiled_crates(&build());
    assert!(n >= 1, "the log level changed, yet nothing was recompiled");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("CONFIG_LIBCONSOLE_LOGLEVEL=1\n"));
    assert_eq!(
        compiled_crates(&build()),
        0,
        "a second build after the change recompiled again"
    );

    // A build option reaches the compiler profile: speed instead of size.
    let mut c = kiln();
    c.args(["config", dir, "--set", "BUILD_OPTIMIZE_SIZE=n"]);
    assert_eq!(output(run_with_limit(c, Duration::from_secs(60))).code, 0);
    assert!(compiled_crates(&build()) >= 1);
    let manifest =
        std::fs::read_to_string(d.join(".kiln/build/hello-rebuild_qemu-x86_64.crate/Cargo.toml"))
            .unwrap();
    assert!(manifest.contains("opt-level = 3\n"), "{manifest}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Boot-command sets (the Kraftfile's `boot:`, after OSv's `config_set`):
/// `--boot NAME` picks one, several apply left to right, `--boot help`
/// lists them without booting, an unknown name is refused with the list.
#[test]
fn boot_sets_pick_the_command_line_and_environment() {
    let d = temp_app(&format!(
        "spec: v0.6\nname: bootsets\napp: {}\ntargets: [qemu/x86_64]\ncmd: [env, MODE]\nenv:\n  MODE: normal\nboot:\n  debug:\n    env:\n      MODE: debug\n  quit:\n    cmd: exit 7\n",
        root().join("apps/crashtest").display()
    ));
    let dir = d.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut c = kiln();
        c.args(["run", "-q"]).args(extra).arg(dir);
        output(run_with_limit(c, Duration::from_secs(300)))
    };
    // crashtest prints its request, then the variable.
    let r = run(&[]);
    assert_eq!(
        (r.code, r.stdout.lines().last()),
        (0, Some("MODE=normal")),
        "{}",
        r.stderr
    );
    let r = run(&["--boot", "debug"]);
    assert_eq!(
        (r.code, r.stdout.lines().last()),
        (0, Some("MODE=debug")),
        "{}",
        r.stderr
    );
    let r = run(&["--boot", "debug", "--boot", "quit"]);
    assert_eq!(r.code, 7, "{}{}", r.stdout, r.stderr);
    let r = run(&["--boot", "help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("  default  cmd: env MODE; env: MODE=normal\n")
            && r.stdout.contains("  quit  cmd: exit 7; env: MODE=normal\n"),
        "{}",
        r.stdout
    );
    let e = kiln_error(&["run", "--boot", "fast", dir]);
    assert!(
        e.contains("--boot fast") && e.contains("default, debug, quit"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
