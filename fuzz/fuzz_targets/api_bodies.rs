#![no_main]
//! Fuzz target `api_bodies`: see fuzz/src/lib.rs for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::api_bodies(data));
