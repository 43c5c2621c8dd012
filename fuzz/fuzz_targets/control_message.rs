#![no_main]
//! Fuzz target `control_message`: see fuzz/src/lib.rs for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::control_message(data));
