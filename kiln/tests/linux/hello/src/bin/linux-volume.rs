//! File work on a mounted volume, for kiln/tests/volumes.rs:
//! - `count DIR`: reads DIR/count.txt (0 if missing), writes it plus one,
//!   fsyncs, and prints `was N now M`; then makes, renames and lists a
//!   directory with a long name and prints statfs's figures.
//! - `loop DIR`: increments DIR/count.txt forever, printing `synced N`
//!   after each fsync returned (what was acknowledged).
//! - `fill DIR`: writes 64 KiB blocks to DIR/fill.bin until a write fails,
//!   and prints the error (ENOSPC expected).
//! - `write DIR`: tries to create DIR/new.txt and prints the error.
//! - `sync DIR`: writes through O_SYNC and O_DSYNC descriptors, fdatasyncs,
//!   truncates a file down and extends it, and prints what it reads back.
//! - `threads DIR`: four threads each write, fsync and read back their own
//!   256 KiB file at once; prints how many came back whole.
//! - `share DIR`: prints DIR/hello.txt (the host's), links to it, truncates
//!   a copy, makes a file mode 0600, removes a directory tree it made.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

fn counter(dir: &str) -> (File, u64) {
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(format!("{dir}/count.txt")).expect("open count.txt");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read count.txt");
    let n = s.trim().parse().unwrap_or(0);
    (f, n)
}

fn put(f: &mut File, n: u64) {
    f.seek(SeekFrom::Start(0)).unwrap();
    // Fixed width: the file's size never changes after the first write.
    f.write_all(format!("{n:020}\n").as_bytes()).expect("write count.txt");
    f.sync_all().expect("fsync");
}

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(libc::EROFS) => "EROFS".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, dir) = (args[1].as_str(), args[2].as_str());
    match what {
        "count" => {
            let (mut f, n) = counter(dir);
            put(&mut f, n + 1);
            println!("was {n} now {}", n + 1);
            let d = format!("{dir}/A Directory With A Long Name");
            let _ = fs::remove_dir_all(&d);
            fs::create_dir(&d).expect("mkdir");
            fs::write(format!("{d}/note.txt"), b"kept").expect("write note");
            fs::rename(format!("{d}/note.txt"), format!("{d}/renamed-note.txt")).expect("rename");
            let mut names: Vec<String> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            println!("listing {}", names.join(","));
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            let c = std::ffi::CString::new(dir).unwrap();
            // SAFETY: a valid path and a statfs buffer.
            let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
            println!("statfs {r} type {:x} free {} of {}", st.f_type, st.f_bfree, st.f_blocks);
        }
        "loop" => {
            let (mut f, mut n) = counter(dir);
            loop {
                n += 1;
                put(&mut f, n);
                println!("synced {n}");
            }
        }
        "fill" => {
            let mut f = File::create(format!("{dir}/fill.bin")).expect("create fill.bin");
            let block = vec![0x5au8; 64 * 1024];
            let mut written = 0u64;
            loop {
                match f.write(&block) {
                    Ok(0) => {
                        println!("fill: write returned 0 after {written}");
                        break;
                    }
                    Ok(n) => written += n as u64,
                    Err(e) => {
                        println!("fill: {} after {written} bytes", errno(&e));
                        break;
                    }
                }
            }
        }
        "sync" => {
            use std::os::unix::fs::OpenOptionsExt;
            let open = |name: &str, flags: i32| {
                OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(format!("{dir}/{name}")).expect(name)
            };
            open("osync.txt", libc::O_SYNC).write_all(b"o_sync").expect("write O_SYNC");
            open("odsync.txt", libc::O_DSYNC).write_all(b"o_dsync").expect("write O_DSYNC");
            let mut f = open("data.txt", 0);
            f.write_all(b"0123456789").unwrap();
            f.sync_data().expect("fdatasync");
            f.set_len(4).expect("truncate down");
            f.set_len(8).expect("extend");
            drop(f);
            let read = |name: &str| fs::read(format!("{dir}/{name}")).expect(name);
            println!(
                "sync: {:?} {:?} {:?}",
                String::from_utf8_lossy(&read("osync.txt")),
                String::from_utf8_lossy(&read("odsync.txt")),
                read("data.txt")
            );
        }
        "threads" => {
            let workers: Vec<_> = (0..4u8)
                .map(|t| {
                    let path = format!("{dir}/thread{t}.bin");
                    std::thread::spawn(move || {
                        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8 ^ t).collect();
                        let mut f = File::create(&path).expect("create");
                        for chunk in data.chunks(4096) {
                            f.write_all(chunk).expect("write");
                        }
                        f.sync_all().expect("fsync");
                        drop(f);
                        fs::read(&path).expect("read back") == data
                    })
                })
                .collect();
            let whole = workers.into_iter().map(|w| w.join()).filter(|r| matches!(r, Ok(true))).count();
            println!("threads: {whole} of 4 files whole");
        }
        "write" => match File::create(format!("{dir}/new.txt")) {
            Ok(_) => println!("write: created"),
            Err(e) => println!("write: {}", errno(&e)),
        },
        "share" => {
            print!("host says: {}", fs::read_to_string(format!("{dir}/hello.txt")).expect("read hello.txt"));
            let _ = fs::remove_file(format!("{dir}/link"));
            std::os::unix::fs::symlink("hello.txt", format!("{dir}/link")).expect("symlink");
            print!("through the link: {}", fs::read_to_string(format!("{dir}/link")).expect("read link"));
            fs::write(format!("{dir}/cut.txt"), b"0123456789").unwrap();
            OpenOptions::new().write(true).open(format!("{dir}/cut.txt")).unwrap().set_len(4).expect("truncate");
            fs::write(format!("{dir}/secret.txt"), b"s").unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(format!("{dir}/secret.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
            fs::create_dir_all(format!("{dir}/tmp/a/b")).unwrap();
            fs::write(format!("{dir}/tmp/a/b/f"), b"x").unwrap();
            fs::remove_dir_all(format!("{dir}/tmp")).expect("remove_dir_all");
            let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            println!("share: {}", names.join(","));
        }
        _ => panic!("unknown command {what}"),
    }
}
