//! A full TLS conversation between a rustls client and a `Session`, on the
//! host: handshake, a request and its answer, close_notify both ways, and
//! bytes that are not TLS.

use kiln_tls::{server_config, Session};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::sync::Arc;

const CA: &[u8] = include_bytes!("data/ca.pem");
const CERT: &[u8] = include_bytes!("data/server.pem");
const KEY: &[u8] = include_bytes!("data/server.key");

fn client() -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA).unwrap())
        .unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls_rustcrypto::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("kiln.test").unwrap())
        .unwrap()
}

/// Moves bytes both ways until neither side has anything to say; what the
/// client's application reads goes into `got`.
fn exchange(c: &mut rustls::ClientConnection, s: &mut Session, got: &mut Vec<u8>) {
    for _ in 0..32 {
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        if !to_server.is_empty() {
            s.received(&to_server);
        }
        let out = s.outgoing().to_vec();
        s.sent(out.len());
        if !out.is_empty() {
            let mut r = &out[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                c.process_new_packets().unwrap();
                let mut chunk = [0u8; 8192];
                loop {
                    match c.reader().read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        if to_server.is_empty() && out.is_empty() {
            return;
        }
    }
    panic!("the conversation did not settle");
}

#[test]
fn a_request_and_its_answer_over_tls() {
    let config = server_config(CERT, KEY, &[b"http/1.1"]).unwrap();
    let mut s = Session::new(config).unwrap();
    let mut c = client();
    c.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: kiln.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got);
    assert!(s.established(), "{:?}", s.error());
    assert_eq!(c.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf);
    assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: kiln.test\r\n\r\n");
    // A large answer, more than one record.
    let body = vec![b'x'; 40_000];
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n".to_vec();
    answer.extend_from_slice(&body);
    let mut at = 0;
    while at < answer.len() {
        let n = s.write(&answer[at..]);
        at += n;
        exchange(&mut c, &mut s, &mut got);
    }
    assert_eq!(got, answer);
    // Both close.
    c.send_close_notify();
    s.close();
    exchange(&mut c, &mut s, &mut got);
    assert!(s.peer_closed());
}

#[test]
fn plain_http_to_the_tls_port_is_an_error_with_an_alert() {
    let config = server_config(CERT, KEY, &[]).unwrap();
    let mut s = Session::new(config).unwrap();
    s.received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(s.error().is_some());
    assert!(!s.established());
    // Nothing more is taken.
    assert_eq!(s.write(b"hello"), 0);
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    // A well-formed P-256 key, as `openssl genpkey` makes them, of no
    // certificate here.
    let other = b"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYQFbAXfrxF43gU7O
ZGRjrP/+7fsPTF7J3VFvZNl0rLqhRANCAARdaemTCZ55hPqEzlvDUXn2+bRiCdc1
LQNk1oAT8Uq1SOLMLT7OCKvTMIGr0/RViWgPhEAw9SJWSJPOsIfGzqht
-----END PRIVATE KEY-----
";
    let e = server_config(CERT, other, &[]).unwrap_err();
    assert_eq!(e, "the private key does not go with the certificate");
    // Its own key goes.
    assert!(server_config(CERT, KEY, &[]).is_ok());
}

#[test]
fn the_common_name_of_a_certificate() {
    let der = CertificateDer::from_pem_slice(CERT).unwrap();
    assert_eq!(kiln_tls::common_name(&der).as_deref(), Some("kiln.test"));
    let ca = CertificateDer::from_pem_slice(CA).unwrap();
    assert_eq!(kiln_tls::common_name(&ca).as_deref(), Some("Kiln test CA"));
    assert_eq!(kiln_tls::common_name(b"\x30\x03\x02\x01\x00"), None);
    assert_eq!(kiln_tls::common_name(b""), None);
}
