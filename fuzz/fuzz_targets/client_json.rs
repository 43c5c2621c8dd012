#![no_main]
//! Fuzz target `client_json`: see fuzz/src/lib.rs for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::client_frame(
    roomcast_protocol::Encoding::Json,
    data
));
