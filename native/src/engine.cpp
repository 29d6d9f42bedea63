#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "error.hpp"
#include "prompt.hpp"

namespace fe {
namespace {

constexpr int kFusionLTokens = 144;

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// runtime/sampling.py's choice rule; temperature 0 is numpy's argmax (first maximum).
int sample(const std::vector<float> & logits, const fe_ask_options & o, std::mt19937_64 & rng) {
    if (o.temperature <= 0.0f) return int(std::max_element(logits.begin(), logits.end()) - logits.begin());
    std::vector<double> z(logits.size());
    for (size_t i = 0; i < z.size(); ++i) z[i] = double(logits[i]) / o.temperature;
    if (o.top_k > 0 && size_t(o.top_k) < z.size()) {
        std::vector<double> s(z);
        std::nth_element(s.begin(), s.end() - o.top_k, s.end());
        const double kth = *(s.end() - o.top_k);
        for (auto & v : z) if (v < kth) v = -INFINITY;
    }
    const double mx = *std::max_element(z.begin(), z.end());
    std::vector<double> p(z.size());
    double sum = 0;
    for (size_t i = 0; i < p.size(); ++i) sum += (p[i] = std::exp(z[i] - mx));
    for (auto & v : p) v /= sum;
    if (o.top_p < 1.0f) {
        std::vector<size_t> order(p.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
        double cum = 0;
        std::vector<double> q(p.size(), 0.0);
        for (size_t i : order) {
            if (cum < o.top_p) q[i] = p[i];
            cum += p[i];
        }
        p.swap(q);
    }
    std::discrete_distribution<int> d(p.begin(), p.end());
    return d(rng);
}

// Bytes of s that form complete UTF-8 characters (a streamed piece never splits one).
size_t complete_utf8(const std::string & s) {
    size_t i = s.size(), back = 0;
    while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
    if (i == 0) return s.size();
    const unsigned char lead = s[i - 1];
    const size_t need = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
    return back + 1 >= need ? s.size() : i - 1;
}

}  // namespace

void Engine::open(const std::string & dir, int threads, const std::string & device) {
    if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
    b_ = read_bundle(dir);
    vision_.load(b_.vision_file, threads);
    llm_.load(b_.llm_file, threads, device, b_.parity, b_.interaction_layers);
    if (llm_.n_embd() != vision_.hp().H)
        throw Error(FE_ERR_BUNDLE, "llm.gguf has n_embd " + std::to_string(llm_.n_embd()) + " but vision.gguf says " +
                    std::to_string(vision_.hp().H) + ".", "re-export the bundle");
    tok_.load(b_.tokenizer_dir, llm_.vocab());
}

void Engine::write_dump(const std::string & name, const std::vector<float> & v) const {
    if (dump.dir.empty()) return;
    FILE * f = fopen((dump.dir + "/" + name + ".f32").c_str(), "wb");
    if (!f) throw Error(FE_ERR_INVALID_ARGUMENT, "cannot write the dump folder " + dump.dir + ".", "create it first");
    fwrite(v.data(), sizeof(float), v.size(), f);
    fclose(f);
}

void Engine::look(const Image8 & img) {
    const double t0 = now();
    tiles_ = static_hd_tiles(img, vision_.hp().image);
    const double t1 = now();
    const auto tokens = vision_.encode(tiles_.global, 4, {}, {});
    grid_ = global_grid(tokens, vision_.hp().N(), vision_.hp().H);
    pooled_.clear();
    has_scene_ = true;
    preprocess_s_ = t1 - t0, vision_global_s_ = now() - t1;
    stats.preprocess_s = preprocess_s_, stats.vision_global_s = vision_global_s_;   // fe_get_stats after fe_look
    write_dump("tiles_main", tiles_.main);
    write_dump("tiles_global", tiles_.global);
    write_dump("tokens_global", tokens);
}

const std::pair<std::vector<float>, std::vector<float>> & Engine::pooled(int q) {
    auto it = pooled_.find(q);
    if (it == pooled_.end()) {
        const int s = int(std::lround(std::sqrt(double(q))));
        const Grid lat = adaptive_max_pool(grid_, s);
        const Grid ctx = adaptive_max_pool(grid_, s * vision_.hp().window);
        it = pooled_.emplace(q, std::make_pair(lat.v, context_windows(ctx, q))).first;
    }
    return it->second;
}

void Engine::ask(const std::string & question, const fe_ask_options & o, fe_token_callback cb, void * user,
                 const volatile int32_t * cancel) {
    if (!has_scene_) throw Error(FE_ERR_NO_IMAGE, "no image: fe_ask was called before fe_look.", "call fe_look with a frame first");
    const int q = o.query_len ? o.query_len : b_.query_len;
    if (std::find(b_.query_lens.begin(), b_.query_lens.end(), q) == b_.query_lens.end())
        throw Error(FE_ERR_INVALID_ARGUMENT, "query_len " + std::to_string(q) + " is not one this checkpoint was trained with.",
                    "use 0 (the bundle's default) or one of the bundle's query_lens");
    const int max_new = o.max_new_tokens;
    const auto & hp = vision_.hp();
    const double t0 = now();
    const PromptLayout L = build_prompt(tok_, b_.template_name, question, b_.image_tokens, q, b_.max_length);
    llm_.cancel_flag = cancel;
    llm_.reserve(L.seq_len() + max_new);
    // instruct embeddings → guided main tile → image rows; latent init rows; text rows
    std::vector<int> keep;
    for (int id : L.instruct_ids) keep.push_back(id != 0);
    auto image = vision_.encode(tiles_.main, 1, llm_.embed(L.instruct_ids), keep);
    write_dump("image_tokens", image);
    if (L.num_image_tokens == kFusionLTokens && hp.N() != kFusionLTokens) image = fusion_l_resize(image, hp.N(), hp.H, 12);
    const auto & pl = pooled(q);
    std::vector<int> text_ids(L.input_ids);
    for (auto & v : text_ids) v = std::max(v, 0);
    std::vector<float> x = llm_.embed(text_ids);
    std::copy(image.begin(), image.end(), x.begin() + size_t(L.image_start) * hp.H);
    std::copy(pl.first.begin(), pl.first.end(), x.begin() + size_t(L.latent_start) * hp.H);
    const double t1 = now();
    const int W = hp.window * hp.window;
    dump.align_in.clear(), dump.align_h.clear(), dump.align_out.clear();
    AlignFn align = [&](int k, const float * h_inst, const float * lat) {
        auto out = vision_.align(k, h_inst, lat, q, pl.second, W);
        if (!dump.dir.empty()) {
            dump.align_h.insert(dump.align_h.end(), h_inst, h_inst + hp.H);
            dump.align_in.insert(dump.align_in.end(), lat, lat + size_t(q) * hp.H);
            dump.align_out.insert(dump.align_out.end(), out.begin(), out.end());
        }
        return out;
    };
    std::vector<int> ids(L.input_ids.begin(), L.input_ids.end());
    auto logits = llm_.prefill(x, ids, L.image_start, L.latent_start, q, L.instruct_pos, align);
    first_logits = logits;
    write_dump("first_logits", logits);
    write_dump("align_h", dump.align_h);
    write_dump("align_in", dump.align_in);
    write_dump("align_out", dump.align_out);
    write_dump("latents_init", pl.first);
    write_dump("windows", pl.second);
    const double t2 = now();
    std::mt19937_64 rng(o.seed);
    token_ids.clear();
    text.clear();
    std::string emitted;
    const std::vector<int> & stops = b_.stop_ids;
    while (true) {
        if (cancel && *cancel) throw Error(FE_ERR_CANCELLED, "the answer was cancelled.", "clear the cancel flag and ask again");
        const int tok = sample(logits, o, rng);
        if (std::find(stops.begin(), stops.end(), tok) != stops.end()) break;
        token_ids.push_back(tok);
        if (cb) {
            const std::string full = tok_.decode(std::vector<int>(token_ids.begin(), token_ids.end()));
            const size_t end = complete_utf8(full);
            std::string piece = end > emitted.size() && full.compare(0, emitted.size(), emitted) == 0
                ? full.substr(emitted.size(), end - emitted.size()) : "";
            emitted += piece;
            if (cb(tok, piece.c_str(), user)) break;
        }
        if (int(token_ids.size()) >= max_new) break;
        logits = llm_.decode(tok);
    }
    text = tok_.decode(std::vector<int>(token_ids.begin(), token_ids.end()));
    const double t3 = now();
    const int steps = std::max(int(token_ids.size()) - 1, 0);
    stats = fe_stats{preprocess_s_, vision_global_s_, t1 - t0, t2 - t1, t2 - t0, t3 - t2,
                     (steps && t3 > t2) ? steps / (t3 - t2) : 0.0, L.seq_len(), int(token_ids.size()), q};
    if (!dump.dir.empty()) {
        FILE * f = fopen((dump.dir + "/prompt_ids.txt").c_str(), "w");
        if (f) {
            for (int v : L.input_ids) fprintf(f, "%d ", v);
            fprintf(f, "\n");
            for (int v : L.instruct_ids) fprintf(f, "%d ", v);
            fprintf(f, "\n");
            fclose(f);
        }
    }
}

}  // namespace fe
