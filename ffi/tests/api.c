/* Every function of the C API with NULL and freed handles, NULL pointers, invalid UTF-8 and
 * out-of-range values: each must return its error code (with a message), never crash. Then a
 * working sequence. Usage: api MODEL (a small model, e.g. testdata/models/rand-llama-q8_0.gguf).
 * Exit status 0 when every check passed. Built and run by ci/ffi.sh (also under valgrind). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flashstream.h"

static int failures = 0;
static int checks = 0;

#define EXPECT(call, want)                                                                  \
    do {                                                                                    \
        flashstream_status got_ = (call);                                                   \
        checks++;                                                                           \
        if (got_ != (want)) {                                                               \
            fprintf(stderr, "FAIL %s:%d: %s returned %d (%s), expected %d: %s\n", __FILE__, \
                    __LINE__, #call, (int)got_, flashstream_status_string(got_), (int)(want),  \
                    flashstream_last_error());                                              \
            failures++;                                                                     \
        } else if ((want) != FLASHSTREAM_OK && flashstream_last_error()[0] == '\0') {       \
            fprintf(stderr, "FAIL %s:%d: %s gave no message\n", __FILE__, __LINE__, #call); \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static int progress_calls = 0;
static bool progress_cancel(float p, void *u) {
    (void)p;
    (void)u;
    progress_calls++;
    return false;
}
static bool progress_go(float p, void *u) {
    (void)u;
    CHECK(p >= 0.0f && p <= 1.0f);
    progress_calls++;
    return true;
}

static int pieces = 0;
static bool stop_after_two(const char *piece, size_t len, int32_t token, void *u) {
    (void)piece;
    (void)len;
    (void)token;
    (void)u;
    return ++pieces < 2;
}

/* Cancellation from another thread: the generating thread's callback counts tokens (slowly);
 * the canceller waits for the first one, then cancels. */
static atomic_int seen = 0;
static bool count_slowly(const char *piece, size_t len, int32_t token, void *u) {
    (void)piece;
    (void)len;
    (void)token;
    (void)u;
    atomic_fetch_add(&seen, 1);
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
    return true;
}
static void *canceller(void *session) {
    struct timespec ts = {0, 1000000};
    while (atomic_load(&seen) == 0) nanosleep(&ts, NULL);
    return (void *)(intptr_t)flashstream_session_cancel((flashstream_session *)session);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 'a', 0};
    char buf[4096];
    size_t len = 0;
    int32_t toks[256];
    uint64_t u64 = 0;
    struct flashstream_stats st;
    struct flashstream_generation gen;
    struct flashstream_engine_params ep = flashstream_engine_default_params();
    struct flashstream_sampling_params sp = flashstream_sampling_default_params();
    flashstream_engine *e = NULL;
    flashstream_session *s = NULL;
    flashstream_engine *fake_e = (flashstream_engine *)(uintptr_t)0xdead0;
    flashstream_session *fake_s = (flashstream_session *)(uintptr_t)0xbeef0;

    CHECK(strlen(flashstream_version()) > 0);
    (void)flashstream_status_string(-1);
    (void)flashstream_status_string(999);

    /* Opening: NULL, bad UTF-8, a missing file, a non-model, a cancelled load, a tiny budget. */
    EXPECT(flashstream_engine_open(NULL, NULL, &e), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_engine_open(model, NULL, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_engine_open(bad_utf8, NULL, &e), FLASHSTREAM_ERR_UTF8);
    EXPECT(flashstream_engine_open("/nonexistent/model.gguf", NULL, &e), FLASHSTREAM_ERR_MODEL);
    EXPECT(flashstream_engine_open(argv[0], NULL, &e), FLASHSTREAM_ERR_MODEL);
    ep.mem_bytes = 4096;
    EXPECT(flashstream_engine_open(model, &ep, &e), FLASHSTREAM_ERR_BUDGET_TOO_SMALL);
    if (strstr(flashstream_last_error(), "minimum") == NULL) {
        fprintf(stderr, "FAIL: the budget error does not state the minimum: %s\n",
                flashstream_last_error());
        failures++;
    }
    CHECK(e == NULL);
    ep.mem_bytes = 256ull << 20;
    ep.n_threads = 2;
    ep.progress_callback = progress_cancel;
    EXPECT(flashstream_engine_open(model, &ep, &e), FLASHSTREAM_ERR_CANCELLED);
    CHECK(progress_calls > 0);
    CHECK(e == NULL);

    /* Every engine and session call on NULL and on a made-up handle. */
    flashstream_engine *bad_es[2] = {NULL, fake_e};
    flashstream_status bad_e_code[2] = {FLASHSTREAM_ERR_NULL, FLASHSTREAM_ERR_BAD_HANDLE};
    for (int i = 0; i < 2; i++) {
        flashstream_engine *b = bad_es[i];
        flashstream_status c = bad_e_code[i];
        EXPECT(flashstream_engine_free(b), c);
        EXPECT(flashstream_engine_plan(b, buf, sizeof buf, &len), c);
        EXPECT(flashstream_engine_set_budget(b, 1ull << 30), c);
        EXPECT(flashstream_engine_set_budget_auto(b, 0.5, 0, 0), c);
        EXPECT(flashstream_engine_stats(b, &st), c);
        EXPECT(flashstream_tokenize(b, "hi", true, true, toks, 256, &len), c);
        EXPECT(flashstream_detokenize(b, toks, 0, buf, sizeof buf, &len), c);
        struct flashstream_chat_message m = {"user", "hi"};
        char *out = NULL;
        EXPECT(flashstream_chat_apply_template(b, &m, 1, true, &out), c);
        EXPECT(flashstream_session_new(b, &s), c);
    }
    flashstream_session *bad_ss[2] = {NULL, fake_s};
    for (int i = 0; i < 2; i++) {
        flashstream_session *b = bad_ss[i];
        flashstream_status c = bad_e_code[i];
        EXPECT(flashstream_session_free(b), c);
        EXPECT(flashstream_session_reset(b), c);
        EXPECT(flashstream_session_cancel(b), c);
        EXPECT(flashstream_session_generate(b, "hi", NULL, NULL, NULL, &gen), c);
        struct flashstream_chat_message m = {"user", "hi"};
        EXPECT(flashstream_session_chat(b, &m, 1, NULL, NULL, NULL, &gen), c);
    }
    flashstream_string_free(NULL);

    /* A real engine. */
    ep.progress_callback = progress_go;
    progress_calls = 0;
    EXPECT(flashstream_engine_open(model, &ep, &e), FLASHSTREAM_OK);
    if (e == NULL) {
        fprintf(stderr, "FAIL: no engine: %s\n", flashstream_last_error());
        return 1;
    }
    CHECK(progress_calls > 0);

    EXPECT(flashstream_engine_plan(e, NULL, 0, &len), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_engine_plan(e, buf, 4, &len), FLASHSTREAM_ERR_BUFFER_TOO_SMALL);
    CHECK(len > 10);
    EXPECT(flashstream_engine_plan(e, buf, sizeof buf, &len), FLASHSTREAM_OK);
    CHECK(strlen(buf) == len && strstr(buf, "budget items:") != NULL);
    EXPECT(flashstream_engine_stats(e, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    CHECK(st.budget_bytes == (256ull << 20) && st.min_budget_bytes > 0 &&
          st.min_budget_bytes <= st.budget_bytes && st.load_bytes > 0);

    /* Budget: below the minimum changes nothing; the minimum works. */
    EXPECT(flashstream_engine_set_budget(e, st.min_budget_bytes - 1),
           FLASHSTREAM_ERR_BUDGET_TOO_SMALL);
    EXPECT(flashstream_engine_set_budget(e, 0), FLASHSTREAM_ERR_BUDGET_TOO_SMALL);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    CHECK(st.budget_bytes == (256ull << 20));
    /* Auto mode: out-of-range fractions are errors that change nothing; on (Linux reads the
       cgroup / MemAvailable) the budget lands within [min, max]; 0 turns it off. */
    EXPECT(flashstream_engine_set_budget_auto(e, 1.5, 0, 0), FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_engine_set_budget_auto(e, -0.1, 0, 0), FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_engine_set_budget_auto(e, 0.0 / 0.0, 0, 0), FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    CHECK(st.budget_bytes == (256ull << 20));
    EXPECT(flashstream_engine_set_budget_auto(e, 0.5, st.min_budget_bytes, 300ull << 20),
           FLASHSTREAM_OK);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    CHECK(st.budget_bytes >= st.min_budget_bytes && st.budget_bytes <= (300ull << 20));
    EXPECT(flashstream_engine_set_budget_auto(e, 0.0, 0, 0), FLASHSTREAM_OK);
    u64 = st.min_budget_bytes;
    EXPECT(flashstream_engine_set_budget(e, u64), FLASHSTREAM_OK);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    CHECK(st.budget_bytes == u64 && st.planned_bytes <= u64);

    /* Tokenizer. */
    EXPECT(flashstream_tokenize(e, NULL, true, true, toks, 256, &len), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_tokenize(e, bad_utf8, true, true, toks, 256, &len), FLASHSTREAM_ERR_UTF8);
    EXPECT(flashstream_tokenize(e, "hi", true, true, toks, 256, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_tokenize(e, "hello world", true, true, toks, 0, &len),
           FLASHSTREAM_ERR_BUFFER_TOO_SMALL);
    EXPECT(flashstream_tokenize(e, "hello world", true, true, NULL, 256, &len),
           FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_tokenize(e, "hello world", false, true, toks, 256, &len), FLASHSTREAM_OK);
    size_t n = len;
    EXPECT(flashstream_detokenize(e, toks, n, buf, sizeof buf, &len), FLASHSTREAM_OK);
    if (strcmp(buf, "hello world") != 0) {
        fprintf(stderr, "FAIL: round trip gave \"%s\"\n", buf);
        failures++;
    }
    EXPECT(flashstream_detokenize(e, NULL, 3, buf, sizeof buf, &len), FLASHSTREAM_ERR_NULL);
    int32_t bad_tok[2] = {-1, 1 << 30};
    EXPECT(flashstream_detokenize(e, bad_tok, 1, buf, sizeof buf, &len), FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_detokenize(e, bad_tok + 1, 1, buf, sizeof buf, &len),
           FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_detokenize(e, toks, n, buf, 2, &len), FLASHSTREAM_ERR_BUFFER_TOO_SMALL);

    /* Chat template. */
    char *chat = NULL;
    struct flashstream_chat_message msgs[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    EXPECT(flashstream_chat_apply_template(e, msgs, 2, true, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_chat_apply_template(e, NULL, 2, true, &chat), FLASHSTREAM_ERR_NULL);
    struct flashstream_chat_message bad_role = {"robot", "x"};
    EXPECT(flashstream_chat_apply_template(e, &bad_role, 1, true, &chat), FLASHSTREAM_ERR_INVALID);
    struct flashstream_chat_message null_content = {"user", NULL};
    EXPECT(flashstream_chat_apply_template(e, &null_content, 1, true, &chat),
           FLASHSTREAM_ERR_NULL);
    struct flashstream_chat_message bad_content = {"user", bad_utf8};
    EXPECT(flashstream_chat_apply_template(e, &bad_content, 1, true, &chat),
           FLASHSTREAM_ERR_UTF8);
    EXPECT(flashstream_chat_apply_template(e, msgs, 2, true, &chat), FLASHSTREAM_OK);
    CHECK(chat != NULL && strstr(chat, "Hi") != NULL);
    flashstream_string_free(chat);

    /* Sessions. */
    EXPECT(flashstream_session_new(e, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_session_new(e, &s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_generate(s, NULL, NULL, NULL, NULL, NULL), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_session_generate(s, bad_utf8, NULL, NULL, NULL, NULL), FLASHSTREAM_ERR_UTF8);
    EXPECT(flashstream_session_generate(s, "", NULL, NULL, NULL, NULL), FLASHSTREAM_ERR_INVALID);
    sp.temperature = -1.0f;
    EXPECT(flashstream_session_generate(s, "hi", &sp, NULL, NULL, NULL), FLASHSTREAM_ERR_INVALID);
    sp = flashstream_sampling_default_params();
    sp.top_p = 2.0f;
    EXPECT(flashstream_session_generate(s, "hi", &sp, NULL, NULL, NULL), FLASHSTREAM_ERR_INVALID);
    sp = flashstream_sampling_default_params();
    sp.n_stop = 2;
    EXPECT(flashstream_session_generate(s, "hi", &sp, NULL, NULL, NULL), FLASHSTREAM_ERR_NULL);
    const char *stops[2] = {"x", bad_utf8};
    sp.stop = stops;
    EXPECT(flashstream_session_generate(s, "hi", &sp, NULL, NULL, NULL), FLASHSTREAM_ERR_UTF8);
    const char *empty_stop[1] = {""};
    sp.stop = empty_stop;
    sp.n_stop = 1;
    EXPECT(flashstream_session_generate(s, "hi", &sp, NULL, NULL, NULL), FLASHSTREAM_ERR_INVALID);
    sp = flashstream_sampling_default_params();
    sp.temperature = 0.0f;
    sp.max_tokens = 8;
    sp.stop_at_eog = false;
    EXPECT(flashstream_session_generate(s, "Once upon a time", &sp, NULL, NULL, &gen),
           FLASHSTREAM_OK);
    CHECK(gen.n_generated == 8 && gen.stop_reason == 2);
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    pieces = 0;
    EXPECT(flashstream_session_generate(s, "Once upon a time", &sp, stop_after_two, NULL, &gen),
           FLASHSTREAM_OK);
    if (gen.n_generated != 2 || gen.stop_reason != 4) {
        fprintf(stderr, "FAIL: the callback's stop gave %u tokens, reason %u\n", gen.n_generated,
                gen.stop_reason);
        failures++;
    }
    /* A cancel while nothing runs applies to the next generation (stopped at its first token),
     * then is spent. */
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_cancel(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_generate(s, "Once upon a time", &sp, NULL, NULL, &gen),
           FLASHSTREAM_OK);
    CHECK(gen.stop_reason == 4 && gen.n_generated == 1);
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_generate(s, "Once upon a time", &sp, NULL, NULL, &gen),
           FLASHSTREAM_OK);
    CHECK(gen.stop_reason == 2 && gen.n_generated == 8);
    /* Cancel from another thread while generating. */
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    sp.max_tokens = 200;
    pthread_t th;
    void *th_status = NULL;
    CHECK(pthread_create(&th, NULL, canceller, s) == 0);
    EXPECT(flashstream_session_generate(s, "Once", &sp, count_slowly, NULL, &gen), FLASHSTREAM_OK);
    CHECK(pthread_join(th, &th_status) == 0);
    CHECK((intptr_t)th_status == FLASHSTREAM_OK);
    CHECK(gen.stop_reason == 4 && gen.n_generated < 200);
    sp.max_tokens = 8;
    /* Chat: bad messages, then a reply under the template. */
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_chat(s, NULL, 1, &sp, NULL, NULL, &gen), FLASHSTREAM_ERR_NULL);
    EXPECT(flashstream_session_chat(s, &bad_role, 1, &sp, NULL, NULL, &gen),
           FLASHSTREAM_ERR_INVALID);
    EXPECT(flashstream_session_chat(s, &bad_content, 1, &sp, NULL, NULL, &gen),
           FLASHSTREAM_ERR_UTF8);
    EXPECT(flashstream_session_chat(s, msgs, 2, &sp, NULL, NULL, &gen), FLASHSTREAM_OK);
    CHECK(gen.n_prompt_tokens > 2 && gen.n_generated == 8);
    /* A prompt longer than the context. */
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_OK);
    size_t big = (size_t)st.n_ctx * 8 + 64;
    char *long_prompt = malloc(big + 1);
    for (size_t i = 0; i < big; i++) long_prompt[i] = (i % 2) ? ' ' : 'a';
    long_prompt[big] = 0;
    EXPECT(flashstream_session_generate(s, long_prompt, &sp, NULL, NULL, NULL),
           FLASHSTREAM_ERR_RUNTIME);
    free(long_prompt);
    EXPECT(flashstream_session_cancel(s), FLASHSTREAM_OK);

    /* Freed handles: the session outlives its engine's handle; then both are gone. */
    EXPECT(flashstream_engine_free(e), FLASHSTREAM_OK);
    EXPECT(flashstream_engine_free(e), FLASHSTREAM_ERR_BAD_HANDLE);
    EXPECT(flashstream_engine_stats(e, &st), FLASHSTREAM_ERR_BAD_HANDLE);
    flashstream_session *s2 = NULL;
    EXPECT(flashstream_session_new(e, &s2), FLASHSTREAM_ERR_BAD_HANDLE);
    CHECK(s2 == NULL);
    EXPECT(flashstream_session_reset(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_generate(s, "Once", &sp, NULL, NULL, &gen), FLASHSTREAM_OK);
    EXPECT(flashstream_session_free(s), FLASHSTREAM_OK);
    EXPECT(flashstream_session_free(s), FLASHSTREAM_ERR_BAD_HANDLE);
    EXPECT(flashstream_session_generate(s, "Once", &sp, NULL, NULL, &gen),
           FLASHSTREAM_ERR_BAD_HANDLE);
    EXPECT(flashstream_session_cancel(s), FLASHSTREAM_ERR_BAD_HANDLE);

    printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
