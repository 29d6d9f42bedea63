/* Bad inputs through the C ABI: each gives an error code and a message, never a crash.
 * Usage: c_abi_bad_inputs [BUNDLE_DIR]; with a bundle, the checks that need an open handle run too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusion_edge.h"

static int failures = 0;

static void expect(const char * what, fe_status got, fe_status want) {
    const int ok = got == want && (want == FE_OK || (fe_last_error()[0] != 0 && fe_last_fix()[0] != 0));
    printf("%s %s: %s (%s) %s\n", ok ? "ok  " : "FAIL", what, fe_status_name(got), fe_status_name(want),
           want == FE_OK ? "" : fe_last_error());
    failures += !ok;
}

int main(int argc, char ** argv) {
    fe_engine * e = (fe_engine *) 0x1;
    uint8_t px[3 * 4 * 4] = {0};
    expect("open: NULL out", fe_open("x", NULL, NULL), FE_ERR_INVALID_ARGUMENT);
    expect("open: NULL dir", fe_open(NULL, NULL, &e), FE_ERR_INVALID_ARGUMENT);
    if (e != NULL) { printf("FAIL open: *out not cleared\n"); failures++; }
    expect("open: missing bundle", fe_open("/nonexistent/bundle", NULL, &e), FE_ERR_BUNDLE);
    fe_open_options bad_threads = {-1, NULL};
    expect("open: negative threads", fe_open("/nonexistent", &bad_threads, &e), FE_ERR_INVALID_ARGUMENT);
    expect("look: NULL engine", fe_look(NULL, px, 4, 4, 12), FE_ERR_INVALID_ARGUMENT);
    expect("ask: NULL engine", fe_ask(NULL, "What?", NULL, NULL, NULL, NULL), FE_ERR_INVALID_ARGUMENT);
    expect("stats: NULL engine", fe_get_stats(NULL, NULL), FE_ERR_INVALID_ARGUMENT);
    fe_close(NULL);
    if (argc > 1) {
        char path[4096];
        fe_open_options o = {1, "cpu"};
        snprintf(path, sizeof path, "%s", argv[1]);
        expect("open: bundle", fe_open(path, &o, &e), FE_OK);
        if (e) {
            fe_open_options dev = {1, "tpu"};
            fe_engine * e2 = NULL;
            expect("open: unknown device", fe_open(path, &dev, &e2), FE_ERR_DEVICE);
            expect("ask: before look", fe_ask(e, "What is on the table?", NULL, NULL, NULL, NULL), FE_ERR_NO_IMAGE);
            expect("look: NULL pixels", fe_look(e, NULL, 4, 4, 12), FE_ERR_INVALID_ARGUMENT);
            expect("look: stride < 3*width", fe_look(e, px, 4, 4, 11), FE_ERR_INVALID_ARGUMENT);
            expect("look: zero width", fe_look(e, px, 0, 4, 12), FE_ERR_IMAGE);
            expect("look: negative height", fe_look(e, px, 4, -4, 12), FE_ERR_IMAGE);
            expect("look: 4x4 frame", fe_look(e, px, 4, 4, 12), FE_OK);
            expect("ask: NULL question", fe_ask(e, NULL, NULL, NULL, NULL, NULL), FE_ERR_INVALID_ARGUMENT);
            expect("ask: empty question", fe_ask(e, "   ", NULL, NULL, NULL, NULL), FE_ERR_PROMPT);
            expect("ask: reserved string", fe_ask(e, "what is <image>?", NULL, NULL, NULL, NULL), FE_ERR_PROMPT);
            size_t n = 100000;
            char * longq = (char *) malloc(n + 1);
            memset(longq, 'a', n);
            longq[n] = 0;
            expect("ask: over-long question", fe_ask(e, longq, NULL, NULL, NULL, NULL), FE_ERR_PROMPT);
            /* long enough to pass the byte limit but to overflow the model's max_length */
            for (size_t i = 0; i < 16000; i += 2) longq[i] = 'a', longq[i + 1] = ' ';
            longq[16000] = 0;
            expect("ask: prompt over max_length", fe_ask(e, longq, NULL, NULL, NULL, NULL), FE_ERR_PROMPT);
            free(longq);
            fe_ask_options bad = {-3, 0, 1, 0, 0, 0};
            expect("ask: negative max_new_tokens", fe_ask(e, "What?", &bad, NULL, NULL, NULL), FE_ERR_INVALID_ARGUMENT);
            fe_ask_options badq = {4, 0, 1, 0, 0, 5};
            expect("ask: untrained query_len", fe_ask(e, "What?", &badq, NULL, NULL, NULL), FE_ERR_INVALID_ARGUMENT);
            volatile int32_t cancel = 1;
            fe_ask_options four = {4, 0, 1, 0, 0, 0};
            expect("ask: cancelled", fe_ask(e, "What is on the table?", &four, NULL, NULL, &cancel), FE_ERR_CANCELLED);
            expect("ask: after errors", fe_ask(e, "What is on the table?", &four, NULL, NULL, NULL), FE_OK);
            int32_t count = -1;
            fe_answer_token_ids(e, &count);
            if (count < 1 || count > 4) { printf("FAIL answer: %d tokens\n", count); failures++; }
            expect("stats: NULL out", fe_get_stats(e, NULL), FE_ERR_INVALID_ARGUMENT);
            fe_close(e);
        }
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
