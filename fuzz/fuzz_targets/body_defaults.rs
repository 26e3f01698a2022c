//! `cargo +nightly fuzz run body_defaults`: see [`mollie_gateway_fuzz::body_defaults`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::body_defaults(data));
