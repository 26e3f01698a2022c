//! `cargo +nightly fuzz run store_file`: see [`mollie_gateway_fuzz::store_file`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::store_file(data));
