//! `cargo +nightly fuzz run oauth_state`: see [`mollie_gateway_fuzz::oauth_state`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::oauth_state(data));
