//! Fuzz target: a split model, its parts concatenated (the input is cut before each `GGUF`
//! magic), merged into one model and checked as by `gguf_read`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = flashstream_fuzz::split_parts(data);
    if !flashstream_fuzz::whole_files(&parts) {
        flashstream_fuzz::heads_of_files(&parts);
    }
});
