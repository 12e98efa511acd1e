//! Any bytes as the start of an HTTP request: finding the head's end,
//! the early 400 for a hopeless request line and parsing the head must
//! return an answer, never panic; and a head that parses is never called
//! hopeless while it is still arriving (that would answer a good client 400).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((head, all)) = httpd::head_end(data) {
        assert!(head <= all && all <= data.len());
        assert_eq!(data[all - 1], b'\n');
        if let Ok(req) = httpd::parse_head(&data[..head]) {
            assert!(req.path.starts_with('/'));
            assert!(!req.method.is_empty() && req.method.bytes().all(|c| c.is_ascii_uppercase()));
            let first_line = data.iter().position(|&b| b == b'\n').unwrap_or(head);
            for cut in 0..=first_line {
                assert!(!httpd::hopeless(&data[..cut]), "good request called hopeless after {cut} bytes");
            }
        }
    } else {
        let _ = httpd::hopeless(data);
        let _ = httpd::parse_head(data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = httpd::percent_decode(s) {
            assert!(!p.contains('\0'));
        }
    }
});
