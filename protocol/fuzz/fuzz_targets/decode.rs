//! `cargo +nightly fuzz run decode`: feeds arbitrary bytes to the HXFR
//! decoder in arbitrary pieces, through both `decode` and `read_from`, and
//! checks that they agree and respect the limits. See CONTRIBUTING.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hxfr_fuzz::run(data);
});
