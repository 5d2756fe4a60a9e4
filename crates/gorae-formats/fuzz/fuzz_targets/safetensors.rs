//! libFuzzer target for the safetensors loader; seed the corpus with real `.safetensors` files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gorae_formats::fuzz_safetensors(data));
