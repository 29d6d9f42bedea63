// The C ABI (include/fusion_edge.h): argument checks, error capture, a lock per handle.
#include <algorithm>
#include <cstring>
#include <new>
#include <string>

#include "engine.hpp"
#include "error.hpp"
#include "fusion_edge.h"
#include "fusion_edge_debug.h"

struct fe_engine {
    fe::Engine e;
};

namespace {

constexpr size_t kMaxQuestionBytes = 16384;
constexpr int64_t kMaxPixels = int64_t(16384) * 16384;
thread_local std::string t_error, t_fix;

fe_status fail(fe_status code, const std::string & msg, const std::string & fix) {
    t_error = msg;
    t_fix = fix;
    return code;
}

template <class F>
fe_status guarded(F && f) {
    t_error.clear();
    t_fix.clear();
    try {
        f();
        return FE_OK;
    } catch (const fe::Error & e) {
        return fail(e.code, e.what(), e.fix);
    } catch (const std::bad_alloc &) {
        return fail(FE_ERR_BACKEND, "out of memory.", "free memory, or use a smaller bundle");
    } catch (const std::exception & e) {
        return fail(FE_ERR_INTERNAL, std::string("internal error: ") + e.what(), "report this with the message");
    } catch (...) {
        return fail(FE_ERR_INTERNAL, "internal error.", "report this");
    }
}

fe_status null_arg(const char * fn, const char * name) {
    return fail(FE_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + name + " is NULL.", std::string("pass a valid ") + name);
}

}  // namespace

extern "C" {

const char * fe_version(void) { return "0.1.0"; }
const char * fe_last_error(void) { return t_error.c_str(); }
const char * fe_last_fix(void) { return t_fix.c_str(); }

const char * fe_status_name(fe_status s) {
    switch (s) {
        case FE_OK: return "ok";
        case FE_ERR_INVALID_ARGUMENT: return "invalid_argument";
        case FE_ERR_BUNDLE: return "bundle";
        case FE_ERR_IMAGE: return "image";
        case FE_ERR_PROMPT: return "prompt";
        case FE_ERR_NO_IMAGE: return "no_image";
        case FE_ERR_DEVICE: return "device";
        case FE_ERR_BACKEND: return "backend";
        case FE_ERR_CANCELLED: return "cancelled";
        case FE_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}

fe_status fe_open(const char * dir, const fe_open_options * o, fe_engine ** out) {
    if (!out) return null_arg("fe_open", "out");
    *out = nullptr;
    if (!dir) return null_arg("fe_open", "bundle_dir");
    if (o && o->threads < 0) return fail(FE_ERR_INVALID_ARGUMENT, "fe_open: threads is negative.", "pass 0 (all cores) or a positive count");
    fe_engine * h = nullptr;
    const fe_status st = guarded([&] {
        h = new fe_engine();
        h->e.open(dir, o ? o->threads : 0, (o && o->device) ? o->device : "auto");
    });
    if (st != FE_OK) {
        delete h;
        return st;
    }
    *out = h;
    return FE_OK;
}

fe_status fe_look(fe_engine * h, const uint8_t * rgb, int32_t w, int32_t hgt, int32_t stride) {
    if (!h) return null_arg("fe_look", "engine");
    if (!rgb) return null_arg("fe_look", "rgb");
    if (w <= 0 || hgt <= 0)
        return fail(FE_ERR_IMAGE, "fe_look: the image is " + std::to_string(w) + "x" + std::to_string(hgt) + ".",
                    "pass an image with at least one pixel");
    if (int64_t(w) * hgt > kMaxPixels)
        return fail(FE_ERR_IMAGE, "fe_look: the image is larger than 16384x16384 pixels.", "downscale it");
    if (stride < 3 * w)
        return fail(FE_ERR_INVALID_ARGUMENT, "fe_look: stride " + std::to_string(stride) + " is smaller than 3*width (" +
                    std::to_string(3 * int64_t(w)) + ") for RGB8.", "pass the row pitch in bytes (>= 3*width)");
    std::lock_guard<std::mutex> lk(h->e.mu);
    return guarded([&] {
        fe::Image8 img{w, hgt, std::vector<uint8_t>(size_t(3) * w * hgt)};
        for (int32_t y = 0; y < hgt; ++y) std::memcpy(&img.rgb[size_t(y) * 3 * w], rgb + size_t(y) * stride, size_t(3) * w);
        h->e.look(img);
    });
}

fe_status fe_ask(fe_engine * h, const char * question, const fe_ask_options * o, fe_token_callback cb, void * user,
                 const volatile int32_t * cancel) {
    if (!h) return null_arg("fe_ask", "engine");
    if (!question) return null_arg("fe_ask", "question");
    const size_t n = std::strlen(question);
    if (n > kMaxQuestionBytes)
        return fail(FE_ERR_PROMPT, "the question is " + std::to_string(n) + " bytes, more than fe_ask takes (" +
                    std::to_string(kMaxQuestionBytes) + ").", "ask a shorter question");
    fe_ask_options opt{64, 0.0f, 1.0f, 0, 0, 0};
    if (o) {
        opt = *o;
        if (opt.max_new_tokens == 0) opt.max_new_tokens = 64;
        if (opt.top_p == 0.0f) opt.top_p = 1.0f;
        if (opt.max_new_tokens < 0 || opt.temperature < 0 || opt.top_p < 0 || opt.top_p > 1 || opt.top_k < 0 || opt.query_len < 0)
            return fail(FE_ERR_INVALID_ARGUMENT, "fe_ask: an option is out of range (max_new_tokens >= 1, temperature >= 0, "
                        "top_p in (0,1], top_k >= 0, query_len >= 0).", "fix the fe_ask_options fields");
    }
    std::lock_guard<std::mutex> lk(h->e.mu);
    return guarded([&] { h->e.ask(std::string(question, n), opt, cb, user, cancel); });
}

const char * fe_answer_text(fe_engine * h) { return h ? h->e.text.c_str() : ""; }

const int32_t * fe_answer_token_ids(fe_engine * h, int32_t * count) {
    if (count) *count = h ? int32_t(h->e.token_ids.size()) : 0;
    return h ? h->e.token_ids.data() : nullptr;
}

fe_status fe_get_stats(fe_engine * h, fe_stats * out) {
    if (!h) return null_arg("fe_get_stats", "engine");
    if (!out) return null_arg("fe_get_stats", "out");
    *out = h->e.stats;
    return FE_OK;
}

void fe_close(fe_engine * h) { delete h; }

fe_status fe_debug_set_dump_dir(fe_engine * h, const char * dir) {
    if (!h) return null_arg("fe_debug_set_dump_dir", "engine");
    h->e.dump.dir = dir ? dir : "";
    return FE_OK;
}

fe_status fe_debug_tokenize(fe_engine * h, const char * text, int32_t * ids, int32_t * count) {
    if (!h) return null_arg("fe_debug_tokenize", "engine");
    if (!text || !count || (!ids && *count > 0)) return null_arg("fe_debug_tokenize", "text/ids/count");
    std::lock_guard<std::mutex> lk(h->e.mu);
    return guarded([&] {
        const auto v = h->e.tokenize(text);
        if (int32_t(v.size()) > *count) {
            *count = int32_t(v.size());
            throw fe::Error(FE_ERR_INVALID_ARGUMENT, "the ids buffer is too small.", "pass a larger buffer");
        }
        std::copy(v.begin(), v.end(), ids);
        *count = int32_t(v.size());
    });
}

const float * fe_debug_first_logits(fe_engine * h, int32_t * count) {
    if (count) *count = h ? int32_t(h->e.first_logits.size()) : 0;
    return h ? h->e.first_logits.data() : nullptr;
}

fe_status fe_debug_preprocess(const uint8_t * rgb, int32_t w, int32_t h, int32_t stride, int32_t size, float * main_tile,
                              float * global_tiles) {
    if (!rgb || !main_tile || !global_tiles) return null_arg("fe_debug_preprocess", "rgb/main_tile/global_tiles");
    if (w <= 0 || h <= 0 || size <= 0 || stride < 3 * w)
        return fail(FE_ERR_INVALID_ARGUMENT, "fe_debug_preprocess: bad size or stride.", "pass width, height, size > 0, stride >= 3*width");
    return guarded([&] {
        fe::Image8 img{w, h, std::vector<uint8_t>(size_t(3) * w * h)};
        for (int32_t y = 0; y < h; ++y) std::memcpy(&img.rgb[size_t(y) * 3 * w], rgb + size_t(y) * stride, size_t(3) * w);
        const fe::Tiles t = fe::static_hd_tiles(img, size);
        std::copy(t.main.begin(), t.main.end(), main_tile);
        std::copy(t.global.begin(), t.global.end(), global_tiles);
    });
}

}  // extern "C"
