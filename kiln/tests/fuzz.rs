//! Fuzzing in the suite: every input that once broke a fuzz target is
//! replayed, then each target runs for a short time from its seeds
//! (`scripts/fuzz`; long runs are in FUZZING.md).

use std::process::Command;

fn fuzz(args: &[&str]) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let o = Command::new(format!("{root}/scripts/fuzz"))
        .args(args)
        .output()
        .expect("scripts/fuzz runs");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "scripts/fuzz {args:?} failed:\n{out}\n{err}"
    );
    println!("{out}");
}

#[test]
fn kept_inputs_pass_and_every_target_survives_a_short_run() {
    // Unoptimised (--quick): building takes most of this test's time.
    fuzz(&["--quick", "--replay"]);
    // A fixed seed: the suite repeats the same runs (from a clean
    // checkout's seeds), so it fails for a change, not for luck.
    fuzz(&["--quick", "--seconds", "4", "--seed", "1"]);
}
