//! `cargo +nightly fuzz run token_response`: see [`mollie_gateway_fuzz::token_response`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::token_response(data));
