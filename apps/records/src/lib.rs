//! Records over HTTP, kept in SQLite (lib/sqlite, through its bindgen
//! bindings): a Rust app that uses a C library.
//!
//! - `PUT /kv/KEY` stores the body under KEY; `GET /kv/KEY` returns it
//!   (404 when there is none); `DELETE /kv/KEY` removes it; `GET /kv`
//!   lists the keys, one per line.
//! - `POST /sql` runs the SQL in the body: a query answers with its rows,
//!   tab-separated, the column names first; other statements answer
//!   `OK <changes>`; an error is 400 with SQLite's message.
//!
//! The database is the file `DB` names in the environment (default
//! `/records.db`, on the ramfs root; a file on a volume outlives the
//! guest). One request per connection (`Connection: close`).
//!
//! With arguments, the app runs them as SQL files instead (each one's
//! last rows printed as for `POST /sql`) and ends: `kiln run apps/records
//! -- /schema.sql`.
#![no_std]

use kiln_sqlite::{Connection, Value};
use kiln_std::net::TcpListener;
use kiln_std::prelude::*;

const PORT: i64 = kiln_std::kconfig_int!("APP_RECORDS_PORT", 8080);
/// Largest request head plus body taken.
const MAX_REQUEST: usize = 1 << 20;

/// Entry point.
pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32 {
    let path = env.iter().find(|(k, _)| *k == "DB").map_or("/records.db", |(_, v)| *v);
    let db = match Connection::open(path) {
        Ok(db) => db,
        Err(e) => {
            println!("records: {path}: {e}");
            return 1;
        }
    };
    if let Err(e) = db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)") {
        println!("records: {path}: {e}");
        return 1;
    }
    // SQL files given as arguments are run, the last statement's rows
    // printed, and the app ends: `kiln run apps/records -- /schema.sql`.
    if args.len() > 1 {
        for file in &args[1..] {
            let text = match kiln_std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    println!("records: {file}: {e:?}");
                    return 1;
                }
            };
            match sql(&db, text.as_bytes()) {
                Ok(reply) => print!("{}", String::from_utf8_lossy(&reply.body)),
                Err(e) => {
                    println!("records: {file}: {e}");
                    return 1;
                }
            }
        }
        return 0;
    }
    let mut listener = match TcpListener::bind(PORT as u16, 16) {
        Ok(l) => l,
        Err(e) => {
            println!("records: port {PORT}: {e:?}");
            return 1;
        }
    };
    println!("records: SQLite {} at {path}, listening on {PORT}", Connection::version());
    loop {
        let Ok(mut conn) = listener.accept() else { continue };
        let reply = match read_request(&mut conn) {
            Ok(req) => handle(&db, &req),
            Err(status) => Reply::text(status, "bad request\n"),
        };
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&reply.body);
        conn.shutdown();
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply { status, body: body.as_bytes().to_vec() }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

/// Reads a request head and its Content-Length body; `Err` is the status
/// for a request that cannot be read.
fn read_request(conn: &mut kiln_std::net::TcpStream) -> Result<Request, u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16384 {
            return Err(413);
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = core::str::from_utf8(&buf[..head_end]).map_err(|_| 400u16)?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| 400u16)?;
            }
        }
    }
    if len > MAX_REQUEST {
        return Err(413);
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Ok(Request { method, path, body })
}

fn handle(db: &Connection, req: &Request) -> Reply {
    let result = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/sql") => sql(db, &req.body),
        ("GET", "/kv") => keys(db),
        (m, p) if p.starts_with("/kv/") && p.len() > 4 => kv(db, m, &p[4..], &req.body),
        (_, "/sql") | (_, "/kv") => return Reply::text(405, "method not allowed\n"),
        _ => return Reply::text(404, "not found\n"),
    };
    result.unwrap_or_else(|e| Reply::text(400, &format!("{e}\n")))
}

fn kv(db: &Connection, method: &str, key: &str, body: &[u8]) -> kiln_sqlite::Result<Reply> {
    match method {
        "GET" => {
            let mut s = db.prepare("SELECT value FROM kv WHERE key = ?1")?;
            s.bind_text(1, key)?;
            if !s.step()? {
                return Ok(Reply::text(404, "no such key\n"));
            }
            let body = match s.column(0) {
                Value::Blob(b) => b,
                v => v.to_string().into_bytes(),
            };
            Ok(Reply { status: 200, body })
        }
        "PUT" => {
            let value = core::str::from_utf8(body).unwrap_or("");
            let mut s = db.prepare("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?;
            s.bind_text(1, key)?;
            s.bind_text(2, value)?;
            s.step()?;
            Ok(Reply::text(201, "stored\n"))
        }
        "DELETE" => {
            let mut s = db.prepare("DELETE FROM kv WHERE key = ?1")?;
            s.bind_text(1, key)?;
            s.step()?;
            drop(s);
            Ok(if db.changes() > 0 { Reply::text(200, "deleted\n") } else { Reply::text(404, "no such key\n") })
        }
        _ => Ok(Reply::text(405, "method not allowed\n")),
    }
}

fn keys(db: &Connection) -> kiln_sqlite::Result<Reply> {
    let mut s = db.prepare("SELECT key FROM kv ORDER BY key")?;
    let mut out = String::new();
    while s.step()? {
        out += &format!("{}\n", s.column(0));
    }
    Ok(Reply { status: 200, body: out.into_bytes() })
}

/// Runs every statement in `body`; the last one's rows (or change count)
/// are the answer.
fn sql(db: &Connection, body: &[u8]) -> kiln_sqlite::Result<Reply> {
    let text = core::str::from_utf8(body).map_err(|_| kiln_sqlite::Error { code: 1, message: "the SQL is not UTF-8".into() })?;
    if text.contains('\0') {
        return Err(kiln_sqlite::Error { code: 1, message: "a NUL byte in the SQL".into() });
    }
    let mut c_text = Vec::with_capacity(text.len() + 1);
    c_text.extend_from_slice(text.as_bytes());
    c_text.push(0);
    let mut rest: &[u8] = &c_text;
    let mut out = String::new();
    while let Some((mut s, tail)) = db.prepare_next(rest)? {
        rest = tail;
        out.clear();
        let n = s.column_count();
        if n > 0 {
            out += &(0..n).map(|i| s.column_name(i)).collect::<Vec<_>>().join("\t");
            out.push('\n');
        }
        while s.step()? {
            out += &(0..n).map(|i| s.column(i).to_string()).collect::<Vec<_>>().join("\t");
            out.push('\n');
        }
        drop(s);
        if n == 0 {
            out = format!("OK {}\n", db.changes());
        }
    }
    Ok(Reply { status: 200, body: out.into_bytes() })
}
