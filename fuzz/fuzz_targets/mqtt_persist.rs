//! The broker's persistence file as it may be found on a disk after a
//! crash or a tampering: `Broker::restore` must refuse what is damaged
//! without panicking, and what it accepts must save back to the same bytes.
#![no_main]

use kiln_mqtt::broker::Broker;
use kiln_mqtt::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Broker::new(Config::default(), 0);
    if b.restore(data, 0).is_ok() {
        let snap = b.snapshot(0);
        let mut again = Broker::new(Config::default(), 0);
        again.restore(&snap, 0).expect("a snapshot of a restored broker restores");
        assert_eq!(again.snapshot(0), snap);
    }
});
