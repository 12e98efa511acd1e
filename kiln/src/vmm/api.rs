//! The HTTP API Firecracker and cloud-hypervisor serve on a Unix socket:
//! just enough of HTTP/1.1 to send one request and read the status.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Sends `method path` with a JSON `body` and returns the response's
/// status code.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> Result<u16> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // The status line is all that is needed; the VMM may keep the
    // connection open after its answer, so read only until it has come.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).context("reading the VMM's answer")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head)
}

/// The status code in a response's first line.
fn status_code(head: &[u8]) -> Result<u16> {
    let line = String::from_utf8_lossy(head);
    let line = line.lines().next().unwrap_or("");
    match line.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(c) if line.starts_with("HTTP/1.") => Ok(c),
        _ => bail!("the VMM answered '{line}', not HTTP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_an_answer() {
        let dir = std::env::temp_dir().join(format!("kiln-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = vec![0u8; 4096];
            let mut n = 0;
            while !got[..n].ends_with(b"}") {
                n += c.read(&mut got[n..]).unwrap();
            }
            c.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            // Kept open, as a VMM may.
            std::thread::sleep(Duration::from_millis(300));
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        let code = request(
            &sock,
            "PUT",
            "/actions",
            "{\"action_type\":\"SendCtrlAltDel\"}",
        )
        .unwrap();
        assert_eq!(code, 204);
        let req = server.join().unwrap();
        assert!(req.starts_with("PUT /actions HTTP/1.1\r\n"), "{req}");
        assert!(
            req.ends_with("\r\n\r\n{\"action_type\":\"SendCtrlAltDel\"}"),
            "{req}"
        );
        assert!(status_code(b"garbage").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
