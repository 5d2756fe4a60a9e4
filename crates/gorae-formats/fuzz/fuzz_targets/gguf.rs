//! libFuzzer target for the GGUF reader; seed the corpus with real `.gguf` files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gorae_formats::fuzz_gguf(data));
