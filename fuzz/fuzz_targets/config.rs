//! `cargo +nightly fuzz run config`: see [`mollie_gateway_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::config(data));
