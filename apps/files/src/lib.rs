//! Files example: walks the root file system its initrd provided, prints
//! what it finds (so the boot test can compare it with the rootfs folder
//! byte for byte), then writes, appends, renames and removes files.
#![no_std]

use kiln_std::fs::{self, File, FileType, OpenOptions, SeekFrom};
use kiln_std::prelude::*;

fn walk(path: &str) -> fs::Result<()> {
    for e in fs::read_dir(path)? {
        let p = if path == "/" {
            format!("/{}", e.name)
        } else {
            format!("{path}/{}", e.name)
        };
        let m = fs::symlink_metadata(&p)?;
        match e.kind {
            FileType::Dir => {
                println!("dir  {p} mode {:o}", m.mode);
                if p != "/dev" {
                    walk(&p)?;
                }
            }
            FileType::Symlink => println!("link {p} -> {}", fs::read_link(&p)?),
            FileType::File => println!("file {p} mode {:o} size {}", m.mode, m.size),
            FileType::CharDevice => println!("dev  {p}"),
        }
    }
    Ok(())
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn run() -> fs::Result<()> {
    walk("/")?;
    print!("motd: {}", fs::read_to_string("/etc/motd")?);
    print!("greeting: {}", fs::read_to_string("/etc/greeting")?);
    println!("blob: {}", hex(&fs::read("/data/blob.bin")?));

    // Write, append, read back, seek.
    let mut f = File::create("/tmp/new.txt")?;
    f.write_all(b"written by the app\n")?;
    drop(f);
    let mut f = OpenOptions::new().append(true).open("/tmp/new.txt")?;
    f.write_all(b"appended\n")?;
    drop(f);
    let mut f = File::open("/tmp/new.txt")?;
    f.seek(SeekFrom::Start(11))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest)?;
    print!("tail: {}", String::from_utf8_lossy(&rest));
    fs::rename("/tmp/new.txt", "/data/moved.txt")?;
    print!("moved: {}", fs::read_to_string("/data/moved.txt")?);
    fs::remove_file("/data/moved.txt")?;
    println!(
        "after remove: {}",
        fs::metadata("/data/moved.txt")
            .err()
            .map_or("still there", |e| e.name())
    );
    println!(
        "missing: {}",
        File::open("/nope").err().map_or("?", |e| e.name())
    );
    println!(
        "rmdir non-empty: {}",
        fs::remove_dir("/data").err().map_or("?", |e| e.name())
    );

    // Device nodes.
    let mut z = [1u8; 8];
    File::open("/dev/zero")?.read(&mut z)?;
    let mut r = [0u8; 16];
    File::open("/dev/urandom")?.read(&mut r)?;
    let n = OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .write(b"gone")?;
    println!(
        "zero: {} null took {n} urandom nonzero: {}",
        hex(&z),
        r.iter().any(|b| *b != 0)
    );
    Ok(())
}

/// Entry point.
pub fn main(_args: &[&str], _env: &[(&str, &str)]) -> i32 {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("files: {e}");
            1
        }
    }
}
