#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| edgeflag::fuzzing::state_pointer(data));
