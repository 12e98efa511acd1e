//! `kiln menu` in a real terminal: tmux runs it, sends keys and reads the
//! screen back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn app_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-menu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let app = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("apps/helloworld");
    std::fs::write(
        d.join("Kraftfile"),
        format!(
            "spec: v0.6\nname: {name}\napp: {}\ntargets: [qemu/x86_64]\n",
            app.display()
        ),
    )
    .unwrap();
    d
}

struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let name = format!("kiln-menu-test-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("tmux is installed by scripts/setup");
        assert!(ok.success());
        Tmux(name)
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(Command::new("tmux")
                .args(["send-keys", "-t", &self.0, k])
                .status()
                .unwrap()
                .success());
            // A lone Escape is only known as such once nothing follows it
            // for a while (tmux's escape-time, then the terminal library's).
            std::thread::sleep(Duration::from_millis(if *k == "Escape" { 700 } else { 60 }));
        }
    }

    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "screen never showed {text:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn running(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn menu_in_a_terminal_searches_edits_and_saves() {
    let d = app_dir("menu");
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let t = Tmux::start(&format!("{kiln} menu {}; sleep 30", d.display()));
    let s = t.wait_for("Libraries  --->");
    assert!(
        s.contains("Architecture  --->")
            && s.contains("Platform  --->")
            && s.contains("Build options  --->"),
        "{s}"
    );

    // Into Libraries: the heap choice shows its selection, the log level its value.
    t.keys(&["Down", "Down", "Enter"]);
    let s = t.wait_for("Heap allocator (TLSF");
    assert!(s.contains("(3) Kernel message level"), "{s}");
    assert!(s.contains("[*] Print a boot banner"), "{s}");

    // Search for the log level, jump to it, edit it.
    t.keys(&["/", "LOGLEVEL", "Enter"]);
    t.wait_for("symbols match 'LOGLEVEL'");
    t.keys(&["Enter"]);
    t.wait_for("> (3) Kernel message level");
    t.keys(&["Enter", "BSpace", "1", "Enter"]);
    t.wait_for("(1) Kernel message level");

    // Help shows the symbol, its dependencies and its help text.
    t.keys(&["?"]);
    let s = t.wait_for("Symbol: LIBCONSOLE_LOGLEVEL [=1]");
    assert!(
        s.contains("Depends on: LIBCONSOLE [=y]") && s.contains("kiln.loglevel=N"),
        "{s}"
    );
    t.keys(&["Escape"]);

    // Pick the region heap in the choice's radio list (the cursor walks
    // to it: where it is in the list depends on the libraries there are).
    let cursor = |s: &str| {
        s.lines()
            .find(|l| l.contains("│>"))
            .unwrap_or("")
            .to_string()
    };
    t.keys(&["Home"]);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    loop {
        let here = cursor(&t.screen());
        if here.contains("Heap allocator") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the cursor never reached the heap choice:\n{}",
            t.screen()
        );
        t.keys(&["Down"]);
        // One step at a time: wait until the cursor has moved.
        let moved = Instant::now();
        while cursor(&t.screen()) == here && moved.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    t.keys(&["Enter"]);
    let s = t.wait_for("(X) TLSF");
    assert!(s.contains("( ) Region"), "{s}");
    t.keys(&["Down", "Enter"]);
    t.wait_for("Heap allocator (Region");

    // Leaving asks to save; y saves the app's .config.
    t.keys(&["q"]);
    t.wait_for("Save changes?");
    t.keys(&["y"]);
    let start = Instant::now();
    while !d.join(".config").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no .config saved:\n{}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let saved = std::fs::read_to_string(d.join(".config")).unwrap();
    assert!(saved.contains("CONFIG_LIBCONSOLE_LOGLEVEL=1\n"), "{saved}");
    assert!(
        saved.contains("CONFIG_LIBALLOC_REGION=y\n")
            && saved.contains("# CONFIG_LIBALLOC_TLSF is not set\n"),
        "{saved}"
    );
    assert!(t.running());

    // The saved configuration is what `kiln config` and the build now use.
    let o = Command::new(kiln)
        .args(["config", "--diff"])
        .arg(&d)
        .output()
        .unwrap();
    let diff = String::from_utf8_lossy(&o.stdout);
    assert!(
        diff.contains("CONFIG_LIBCONSOLE_LOGLEVEL: 3 -> 1")
            && diff.contains("CONFIG_LIBALLOC_REGION: n -> y"),
        "{diff}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn menu_without_a_terminal_says_what_to_use() {
    let d = app_dir("menu-noterm");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("menu")
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("kiln menu needs a terminal; use `kiln config`"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
