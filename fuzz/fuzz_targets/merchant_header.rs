//! `cargo +nightly fuzz run merchant_header`: see [`mollie_gateway_fuzz::merchant_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::merchant_header(data));
