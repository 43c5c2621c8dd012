#![no_main]
//! Fuzz target `sse_params`: see fuzz/src/lib.rs for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::sse_params(data));
