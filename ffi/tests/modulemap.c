/* Compiled by ci/ffi.sh with `clang -fmodules -fsyntax-only -I ffi/include`: the module map
 * exposes the C API as the module FlashStream (what Swift's `import FlashStream` loads). */
#pragma clang module import FlashStream

int main(void) {
    struct flashstream_engine_params p = flashstream_engine_default_params();
    flashstream_engine *e = 0;
    return flashstream_engine_open("model.gguf", &p, &e) == FLASHSTREAM_OK ? 0 : 1;
}
