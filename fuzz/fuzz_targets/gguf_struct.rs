//! Fuzz target: the input is a recipe from which a well-formed-looking GGUF file is built
//! (`flashstream_fuzz::structured`), then checked as by `gguf_read`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = flashstream_fuzz::structured::build(data);
    if !flashstream_fuzz::whole_files(&[&file]) {
        flashstream_fuzz::heads_of_files(&[&file]);
    }
});
