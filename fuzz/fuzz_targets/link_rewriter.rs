//! `cargo +nightly fuzz run link_rewriter`: see [`mollie_gateway_fuzz::link_rewriter`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mollie_gateway_fuzz::link_rewriter(data));
