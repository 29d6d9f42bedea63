/* fusion_edge.h: the C ABI of libfusion_edge, FUSION's native runtime (docs/native.md).
 *
 * A handle runs one bundle exported with `fusion-export MODEL --target gguf` (llm.gguf +
 * vision.gguf + tokenizer/). Use: fe_open → fe_look (one frame) → fe_ask (any number of
 * questions about that frame) → fe_close.
 *
 * Errors: every function returns an fe_status; FE_OK is 0. On failure, fe_last_error() and
 * fe_last_fix() give a message and what to do, for the calling thread (valid until that
 * thread's next call into the library). No function aborts the process on bad input.
 * Threads: calls on one handle are serialised by a lock in the handle (one question at a
 * time); different handles run in parallel. fe_cancel's flag may be set from any thread.
 */
#ifndef FUSION_EDGE_H
#define FUSION_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  define FE_API __declspec(dllexport)
#else
#  define FE_API __attribute__((visibility("default")))
#endif

typedef enum fe_status {
    FE_OK = 0,
    FE_ERR_INVALID_ARGUMENT = 1,   /* a null pointer, a bad size or stride, an option out of range */
    FE_ERR_BUNDLE = 2,             /* missing / damaged bundle files, a bundle of another target */
    FE_ERR_IMAGE = 3,              /* an unreadable or empty image */
    FE_ERR_PROMPT = 4,             /* empty / reserved-string / over-long question */
    FE_ERR_NO_IMAGE = 5,           /* fe_ask before fe_look */
    FE_ERR_DEVICE = 6,             /* a device this build cannot use */
    FE_ERR_BACKEND = 7,            /* llama.cpp / ggml failed */
    FE_ERR_CANCELLED = 8,          /* the cancel flag was set */
    FE_ERR_INTERNAL = 9            /* a bug: please report it with the message */
} fe_status;

typedef struct fe_engine fe_engine;

typedef struct fe_open_options {
    int32_t threads;               /* 0: all cores */
    const char * device;           /* "auto" (NULL), "cpu" or "cuda" */
} fe_open_options;

typedef struct fe_ask_options {
    int32_t max_new_tokens;        /* >= 1; 0 means 64 */
    float temperature;             /* 0: greedy (identical to the Python runtime) */
    float top_p;                   /* (0, 1]; 0 means 1 */
    int32_t top_k;                 /* 0: off */
    uint64_t seed;                 /* sampling seed (temperature > 0) */
    int32_t query_len;             /* 0: the bundle's default */
} fe_ask_options;

typedef struct fe_stats {
    double preprocess_s, vision_global_s, vision_main_s, prefill_s, ttft_s, decode_s;
    double decode_tokens_per_s;
    int32_t prompt_tokens, new_tokens, query_len;
} fe_stats;

/* Called for every generated token with the text it completes (may be ""); return non-zero to stop. */
typedef int (*fe_token_callback)(int32_t token_id, const char * piece, void * user);

FE_API const char * fe_version(void);
FE_API const char * fe_last_error(void);
FE_API const char * fe_last_fix(void);
FE_API const char * fe_status_name(fe_status status);

/* Opens bundle_dir; options may be NULL. *out is NULL on failure. */
FE_API fe_status fe_open(const char * bundle_dir, const fe_open_options * options, fe_engine ** out);

/* One RGB8 frame: rows of `stride` bytes (>= 3*width), top row first. Copied; the buffer may be reused. */
FE_API fe_status fe_look(fe_engine * engine, const uint8_t * rgb, int32_t width, int32_t height, int32_t stride);

/* Answers `question` (UTF-8) about the last frame. on_token and cancel may be NULL; *cancel != 0
 * stops the answer (FE_ERR_CANCELLED). The answer: fe_answer_text / fe_answer_token_ids. */
FE_API fe_status fe_ask(fe_engine * engine, const char * question, const fe_ask_options * options,
                        fe_token_callback on_token, void * user, const volatile int32_t * cancel);

/* The last answer of this handle; valid until the next fe_ask / fe_close on it. */
FE_API const char * fe_answer_text(fe_engine * engine);
FE_API const int32_t * fe_answer_token_ids(fe_engine * engine, int32_t * count);
FE_API fe_status fe_get_stats(fe_engine * engine, fe_stats * out);

FE_API void fe_close(fe_engine * engine);   /* NULL is fine */

#ifdef __cplusplus
}
#endif
#endif /* FUSION_EDGE_H */
