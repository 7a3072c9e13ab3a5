/* generate MODEL PROMPT N MEM: prints the greedy continuation of PROMPT (no chat template, at
 * most N tokens) and nothing else on stdout, as `flashstream run MODEL -p PROMPT -n N --temp 0
 * --mem MEM` does (it too ends the text with a newline unless the text ends with one). MEM is
 * in bytes or with a suffix (KiB, MiB, GiB).
 *
 *   gcc -Wall -Werror -I ffi/include ffi/examples/generate.c -L target/release -lflashstream
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashstream.h"

/* Prints each piece as it comes; user_data is the last byte printed (a char). */
static bool on_token(const char *piece, size_t len, int32_t token, void *user_data) {
    (void)token;
    if (len > 0) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
        *(char *)user_data = piece[len - 1];
    }
    return true;
}

static int parse_size(const char *s, uint64_t *out) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return -1;
    uint64_t mul = 1;
    if (*end == '\0' || strcmp(end, "B") == 0) mul = 1;
    else if (strcmp(end, "KiB") == 0 || strcmp(end, "K") == 0) mul = 1ull << 10;
    else if (strcmp(end, "MiB") == 0 || strcmp(end, "M") == 0) mul = 1ull << 20;
    else if (strcmp(end, "GiB") == 0 || strcmp(end, "G") == 0) mul = 1ull << 30;
    else return -1;
    *out = (uint64_t)(v * (double)mul);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL PROMPT N MEM\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[3]);
    uint64_t mem = 0;
    if (n <= 0 || parse_size(argv[4], &mem) != 0) {
        fprintf(stderr, "N must be a positive number and MEM a size such as 512MiB\n");
        return 2;
    }
    struct flashstream_engine_params ep = flashstream_engine_default_params();
    ep.mem_bytes = mem;
    flashstream_engine *engine = NULL;
    if (flashstream_engine_open(argv[1], &ep, &engine) != FLASHSTREAM_OK) {
        fprintf(stderr, "error: %s\n", flashstream_last_error());
        return 1;
    }
    flashstream_session *session = NULL;
    if (flashstream_session_new(engine, &session) != FLASHSTREAM_OK) {
        fprintf(stderr, "error: %s\n", flashstream_last_error());
        flashstream_engine_free(engine);
        return 1;
    }
    struct flashstream_sampling_params sp = flashstream_sampling_default_params();
    sp.temperature = 0.0f;
    sp.max_tokens = (uint32_t)n;
    int rc = 0;
    char last = 0;
    if (flashstream_session_generate(session, argv[2], &sp, on_token, &last, NULL) !=
        FLASHSTREAM_OK) {
        fprintf(stderr, "error: %s\n", flashstream_last_error());
        rc = 1;
    } else if (last != '\n') {
        putchar('\n');
    }
    flashstream_session_free(session);
    flashstream_engine_free(engine);
    return rc;
}
