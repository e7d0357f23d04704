#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzzing::s3_request(data));
