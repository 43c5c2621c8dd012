#![no_main]
//! Fuzz target `bus_envelope`: see fuzz/src/lib.rs for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = roomcast_fuzz::bus_envelope(data);
});
