//! Fuzz target: one GGUF file (header, metadata, tensor infos, validation), then the config and
//! unit table of the model if it parses. See `flashstream_fuzz` for what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if !flashstream_fuzz::whole_files(&[data]) {
        flashstream_fuzz::heads_of_files(&[data]);
    }
});
