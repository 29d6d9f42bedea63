#include "llm.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>

#include "error.hpp"
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

namespace fe {
namespace {

constexpr int kCtxRound = 256;
std::mutex g_log_mutex;
std::deque<std::string> g_log;      // llama.cpp's recent warnings / errors, for messages

void log_cb(ggml_log_level level, const char * text, void *) {
    if ((level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) && text) {
        std::lock_guard<std::mutex> lk(g_log_mutex);
        g_log.emplace_back(text);
        if (g_log.size() > 20) g_log.pop_front();
    }
}

std::string recent_log() {
    std::lock_guard<std::mutex> lk(g_log_mutex);
    std::string s;
    for (size_t i = g_log.size() > 3 ? g_log.size() - 3 : 0; i < g_log.size(); ++i) {
        std::string line = g_log[i];
        while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
        s += (s.empty() ? "" : " | ") + line;
    }
    g_log.clear();
    return s.empty() ? "" : " (llama.cpp: " + s + ")";
}

void backend_init() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_cb, nullptr);
        llama_backend_init();
    });
}

bool eval_cb(ggml_tensor * t, bool ask, void * user) {
    auto & h = static_cast<LLM *>(user)->hook;
    if (!h.active) return !ask;
    const auto it = h.layer_of.find(ggml_get_name(t));
    if (ask) return it != h.layer_of.end();
    if (it == h.layer_of.end() || !h.error.empty()) return true;
    try {
        const int64_t H = t->ne[0];
        if (t->type != GGML_TYPE_F32 || t->ne[1] != h.rows || t->nb[0] != sizeof(float) || t->nb[1] != size_t(H) * sizeof(float)) {
            h.error = std::string("llama.cpp's ") + ggml_get_name(t) + " is not a contiguous f32 [n_embd, " +
                      std::to_string(h.rows) + "] tensor";
            return true;
        }
        // read/write through the backend: the hidden states may live in GPU memory (offload)
        if (!t->buffer || !t->data) {
            h.error = std::string("llama.cpp's ") + ggml_get_name(t) + " has no data buffer";
            return true;
        }
        const size_t row = size_t(H) * sizeof(float);
        std::vector<float> inst(H), lat(size_t(h.n_lat) * H);
        ggml_backend_tensor_get(t, inst.data(), size_t(h.inst) * row, row);
        ggml_backend_tensor_get(t, lat.data(), size_t(h.lat0) * row, lat.size() * sizeof(float));
        const auto out = (*h.align)(it->second, inst.data(), lat.data());
        if (out.size() != lat.size()) {
            h.error = "interaction layer " + std::to_string(it->second) + " returned a wrong shape";
            return true;
        }
        ggml_backend_tensor_set(t, out.data(), size_t(h.lat0) * row, out.size() * sizeof(float));
        ++h.applied;
    } catch (const std::exception & e) {
        h.error = e.what();
    }
    return true;      // false would cut the graph short: the logits would be silently wrong
}

bool abort_cb(void * user) {
    const auto * llm = static_cast<LLM *>(user);
    return (llm->hook.active && !llm->hook.error.empty()) || (llm->cancel_flag && *llm->cancel_flag);
}

}  // namespace

LLM::~LLM() {
    if (ctx_) llama_free(ctx_);
    if (model_) llama_model_free(model_);
}

const llama_vocab * LLM::vocab() const { return llama_model_get_vocab(model_); }

void LLM::load(const std::string & path, int threads, const std::string & device, bool parity,
               const std::vector<int> & layers) {
    backend_init();
    threads_ = threads;
    parity_ = parity;
    if (device != "auto" && device != "cpu" && device != "cuda")
        throw Error(FE_ERR_DEVICE, "unknown device '" + device + "'.", "use auto, cpu or cuda");
    const bool gpu = llama_supports_gpu_offload();
    if (device == "cuda" && !gpu)
        throw Error(FE_ERR_DEVICE, "device 'cuda' was asked for, but this llama.cpp was built without GPU support.",
                    "build with -DGGML_CUDA=on (docs/native.md), or use device cpu");
    {   // token_embd rows, read from the file (llama.cpp's copy may live on a GPU)
        ggml_context * meta = nullptr;
        gguf_init_params p{true, &meta};
        gguf_context * g = gguf_init_from_file(path.c_str(), p);
        if (!g) throw Error(FE_ERR_BUNDLE, path + " is not a readable GGUF file.", "copy the bundle again, or re-export it");
        const int64_t ti = gguf_find_tensor(g, "token_embd.weight");
        ggml_tensor * te = ti >= 0 ? ggml_get_tensor(meta, "token_embd.weight") : nullptr;
        if (!te) {
            gguf_free(g);
            ggml_free(meta);
            throw Error(FE_ERR_BUNDLE, path + " has no token_embd.weight tensor.", "re-export the bundle");
        }
        embd_type_ = te->type;
        row_bytes_ = ggml_row_size(te->type, te->ne[0]);
        embd_.resize(ggml_nbytes(te));
        const size_t off = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, ti);
        FILE * f = fopen(path.c_str(), "rb");
        const bool ok = f && fseek(f, long(off), SEEK_SET) == 0 && fread(embd_.data(), 1, embd_.size(), f) == embd_.size();
        if (f) fclose(f);
        gguf_free(g);
        ggml_free(meta);
        if (!ok) throw Error(FE_ERR_BUNDLE, path + " is truncated (token_embd).", "copy the bundle again");
    }
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = (gpu && device != "cpu") ? 999 : 0;
    // FUSION_EDGE_NO_REPACK=1: no extra (repacked) weight buffers, e.g. where llama.cpp's AMX
    // path dies with SIGILL (seen on a VM that reports AMX; llama-cpp-python 0.3.36, Q8_0)
    const char * no_repack = std::getenv("FUSION_EDGE_NO_REPACK");
    if (no_repack && *no_repack == '1') mp.use_extra_bufts = false;
    model_ = llama_model_load_from_file(path.c_str(), mp);
    if (!model_)
        throw Error(FE_ERR_BUNDLE, "llama.cpp could not load " + path + recent_log() + ".",
                    "the GGUF is damaged or from another llama.cpp: copy the bundle again or re-export it");
    n_embd_ = llama_model_n_embd(model_);
    n_vocab_ = llama_vocab_n_tokens(vocab());
    const int n_layer = llama_model_n_layer(model_);
    for (size_t k = 0; k < layers.size(); ++k) {
        if (layers[k] >= n_layer - 1)
            throw Error(FE_ERR_BUNDLE, "interaction layer " + std::to_string(layers[k]) + " is the last decoder layer, "
                        "whose l_out holds only output rows in llama.cpp.", "use the Python runtime with an onnx bundle");
        hook.layer_of["l_out-" + std::to_string(layers[k])] = int(k);
    }
}

std::vector<float> LLM::embed(const std::vector<int> & ids) const {
    std::vector<float> out(ids.size() * size_t(n_embd_));
    const auto * traits = ggml_get_type_traits(ggml_type(embd_type_));
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= n_vocab_)
            throw Error(FE_ERR_PROMPT, "token id out of range 0.." + std::to_string(n_vocab_ - 1) + ".",
                        "use ids from the bundle's tokenizer");
        const uint8_t * row = embd_.data() + size_t(ids[i]) * row_bytes_;
        if (embd_type_ == GGML_TYPE_F32) std::memcpy(&out[i * n_embd_], row, row_bytes_);
        else traits->to_float(row, &out[i * n_embd_], n_embd_);
    }
    return out;
}

void LLM::reserve(int capacity) {
    if (capacity <= capacity_) return;
    const int n_ctx = (capacity + kCtxRound - 1) / kCtxRound * kCtxRound;
    llama_context_params p = llama_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = p.n_ubatch = n_ctx;
    p.n_seq_max = 1;
    p.n_threads = p.n_threads_batch = threads_;
    p.type_k = p.type_v = parity_ ? GGML_TYPE_F32 : GGML_TYPE_F16;
    p.flash_attn_type = parity_ ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
    p.cb_eval = eval_cb;
    p.cb_eval_user_data = this;
    p.abort_callback = abort_cb;
    p.abort_callback_data = this;
    p.no_perf = true;
    if (ctx_) llama_free(ctx_), ctx_ = nullptr, capacity_ = 0;
    ctx_ = llama_init_from_model(model_, p);
    if (!ctx_)
        throw Error(FE_ERR_BACKEND, "llama.cpp could not create a context of " + std::to_string(n_ctx) + " positions" +
                    recent_log() + ".", "lower --max-new-tokens, or free memory");
    capacity_ = n_ctx, n_batch_ = n_ctx, length_ = 0;
}

std::vector<float> LLM::run(std::vector<int> * ids, const float * embeds, int n, bool want_logits) {
    llama_batch b = llama_batch_init(n, ids ? 0 : n_embd_, 1);
    b.n_tokens = n;
    for (int i = 0; i < n; ++i) {
        if (ids) b.token[i] = (*ids)[i];
        b.pos[i] = length_ + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = (want_logits && i == n - 1) ? 1 : 0;
    }
    if (!ids) std::memcpy(b.embd, embeds, size_t(n) * n_embd_ * sizeof(float));
    const int rc = llama_decode(ctx_, b);
    llama_batch_free(b);
    if (rc != 0) {
        length_ = 0;
        if (!hook.error.empty())
            throw Error(FE_ERR_BACKEND, "the recursive alignment failed inside llama.cpp's eval callback: " + hook.error + ".",
                        "check the bundle (fusion-edge verify)");
        if (cancel_flag && *cancel_flag) throw Error(FE_ERR_CANCELLED, "the answer was cancelled.", "clear the cancel flag and ask again");
        throw Error(FE_ERR_BACKEND, "llama_decode returned " + std::to_string(rc) + recent_log() + ".",
                    "lower --max-new-tokens or ask a shorter question; if it persists, re-export");
    }
    length_ += n;
    if (!want_logits) return {};
    const float * lg = llama_get_logits_ith(ctx_, -1);
    return std::vector<float>(lg, lg + n_vocab_);
}

std::vector<float> LLM::prefill(const std::vector<float> & embeds, const std::vector<int> & ids, int start,
                                int latent_start, int n_lat, int inst_pos, const AlignFn & align) {
    const int S = int(ids.size()), span = S - start;
    if (!ctx_ || S > capacity_)
        throw Error(FE_ERR_PROMPT, "the KV cache holds " + std::to_string(capacity_) + " positions; " + std::to_string(S) +
                    " are needed.", "lower --max-new-tokens or ask a shorter question");
    if (span > n_batch_)
        throw Error(FE_ERR_PROMPT, "the image + question span has " + std::to_string(span) + " rows, more than one batch.",
                    "ask a shorter question, or choose a smaller query_len");
    llama_memory_clear(llama_get_memory(ctx_), true);
    length_ = 0;
    for (int a = 0; a < start; a += n_batch_) {
        std::vector<int> chunk(ids.begin() + a, ids.begin() + std::min(start, a + n_batch_));
        for (int t : chunk)
            if (t < 0) throw Error(FE_ERR_PROMPT, "the prompt has image/latent slots before its image block.", "rebuild the prompt");
        run(&chunk, nullptr, int(chunk.size()), false);
    }
    if (align) {
        hook = Hook{hook.layer_of};
        hook.lat0 = latent_start - start, hook.n_lat = n_lat, hook.inst = inst_pos - start, hook.rows = span;
        hook.align = &align;
        hook.active = true;
    }
    std::vector<float> logits;
    try {
        logits = run(nullptr, embeds.data() + size_t(start) * n_embd_, span, true);
    } catch (...) {
        hook.active = false;
        throw;
    }
    hook.active = false;
    if (align && hook.applied != int(hook.layer_of.size()))
        throw Error(FE_ERR_BACKEND, "the alignment ran on " + std::to_string(hook.applied) + " of " +
                    std::to_string(hook.layer_of.size()) + " layers inside llama.cpp.",
                    "build against the llama.cpp of llama-cpp-python 0.3.x");
    return logits;
}

std::vector<float> LLM::decode(int token) {
    if (length_ + 1 > capacity_)
        throw Error(FE_ERR_PROMPT, "the KV cache holds " + std::to_string(capacity_) + " positions; " +
                    std::to_string(length_ + 1) + " are needed.", "lower --max-new-tokens or ask a shorter question");
    std::vector<int> one{token};
    return run(&one, nullptr, 1, true);
}

}  // namespace fe
