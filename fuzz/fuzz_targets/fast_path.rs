//! `cargo +nightly fuzz run fast_path`: see [`mollie_gateway_fuzz::fast_path`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::fast_path(data));
