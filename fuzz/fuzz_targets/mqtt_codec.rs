//! Any bytes as an MQTT stream, in each protocol version: framing and
//! decoding return packets or errors, never panic; every packet decoded
//! encodes again and decodes to the same packet.
#![no_main]

use kiln_mqtt::codec::{decode, encode, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [3u8, 4, 5] {
        let mut at = 0;
        while let Ok(Some((first, body, used))) = frame(&data[at..], 4096) {
            assert!(used > 0 && at + used <= data.len());
            at += used;
            let Ok(p) = decode(first, body, version) else { continue };
            let mut out = Vec::new();
            encode(&p, version, &mut out);
            let (f2, b2, n2) = frame(&out, usize::MAX).expect("own framing").expect("a whole packet");
            assert_eq!(n2, out.len());
            let again = decode(f2, b2, version).expect("own encoding decodes");
            assert_eq!(again, p, "round trip in version {version}");
        }
    }
});
