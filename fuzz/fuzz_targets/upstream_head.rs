//! `cargo +nightly fuzz run upstream_head`: see [`mollie_gateway_fuzz::upstream_head`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::upstream_head(data));
