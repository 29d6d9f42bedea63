#include "vision.hpp"

#include <cmath>
#include <cstring>
#include <functional>

#include "error.hpp"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "gguf.h"

namespace fe {
namespace {

// One graph: built in a no_alloc context, inputs/intermediates placed by ggml-alloc in a CPU
// buffer, weights used in place (their data already lives in the weight context).
struct Graph {
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    ggml_gallocr_t alloc = nullptr;
    explicit Graph(size_t max_nodes) {
        ggml_init_params p{ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false), nullptr, true};
        ctx = ggml_init(p);
        gf = ggml_new_graph_custom(ctx, max_nodes, false);
    }
    ~Graph() {
        if (alloc) ggml_gallocr_free(alloc);
        if (ctx) ggml_free(ctx);
    }
    ggml_tensor * input(ggml_type t, std::initializer_list<int64_t> ne) {
        std::vector<int64_t> n(ne);
        ggml_tensor * x = n.size() == 1 ? ggml_new_tensor_1d(ctx, t, n[0])
                        : n.size() == 2 ? ggml_new_tensor_2d(ctx, t, n[0], n[1])
                        : n.size() == 3 ? ggml_new_tensor_3d(ctx, t, n[0], n[1], n[2])
                                        : ggml_new_tensor_4d(ctx, t, n[0], n[1], n[2], n[3]);
        ggml_set_input(x);
        return x;
    }
    void run(ggml_tensor * out, int threads, const std::function<void()> & fill) {
        ggml_set_output(out);
        ggml_build_forward_expand(gf, out);
        alloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
        if (!ggml_gallocr_alloc_graph(alloc, gf))
            throw Error(FE_ERR_BACKEND, "ggml could not allocate the vision graph's memory.", "free memory");
        fill();
        ggml_backend_t cpu = ggml_backend_cpu_init();
        ggml_backend_cpu_set_n_threads(cpu, threads);
        const auto st = ggml_backend_graph_compute(cpu, gf);
        ggml_backend_free(cpu);
        if (st != GGML_STATUS_SUCCESS) throw Error(FE_ERR_BACKEND, "ggml failed to compute the vision graph.", "report this");
    }
};

ggml_tensor * linear(ggml_context * c, ggml_tensor * x, ggml_tensor * wt, ggml_tensor * b) {
    x = ggml_mul_mat(c, wt, x);
    return b ? ggml_add(c, x, b) : x;
}

ggml_tensor * layer_norm(ggml_context * c, ggml_tensor * x, ggml_tensor * g, ggml_tensor * b, float eps) {
    return ggml_add(c, ggml_mul(c, ggml_norm(c, x, eps), g), b);
}

// tanh-approximate GELU in exact f32 (ggml_gelu uses an f16 table on the CPU)
ggml_tensor * gelu_tanh(ggml_context * c, ggml_tensor * x) {
    const float k = std::sqrt(2.0f / float(M_PI));
    ggml_tensor * x3 = ggml_mul(c, ggml_mul(c, x, x), x);
    ggml_tensor * inner = ggml_scale(c, ggml_add(c, x, ggml_scale(c, x3, 0.044715f)), k);
    return ggml_mul(c, x, ggml_scale_bias(c, ggml_tanh(c, inner), 0.5f, 0.5f));
}

uint32_t get_u32(gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) throw Error(FE_ERR_BUNDLE, std::string("vision.gguf lacks ") + key + ".", "re-export the bundle");
    return gguf_get_val_u32(g, id);
}

std::string get_str(gguf_context * g, const char * key) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) throw Error(FE_ERR_BUNDLE, std::string("vision.gguf lacks ") + key + ".", "re-export the bundle");
    return gguf_get_val_str(g, id);
}

}  // namespace

Vision::~Vision() {
    if (gguf_) gguf_free(gguf_);
    if (weights_) ggml_free(weights_);
}

void Vision::load(const std::string & path, int threads) {
    threads_ = threads;
    gguf_init_params p{false, &weights_};
    gguf_ = gguf_init_from_file(path.c_str(), p);
    if (!gguf_) throw Error(FE_ERR_BUNDLE, path + " is not a readable GGUF file.", "copy the bundle again, or re-export it");
    const int64_t arch = gguf_find_key(gguf_, "general.architecture");
    if (arch < 0 || std::string(gguf_get_val_str(gguf_, arch)) != "fusion-vision")
        throw Error(FE_ERR_BUNDLE, path + " is not a FUSION vision GGUF.", "re-export the bundle with --target gguf");
    hp_.tower_type = get_str(gguf_, "fusion.tower.type");
    hp_.projector_type = get_str(gguf_, "fusion.projector.type");
    hp_.D = get_u32(gguf_, "fusion.tower.hidden_size");
    hp_.heads = get_u32(gguf_, "fusion.tower.num_heads");
    hp_.inter = get_u32(gguf_, "fusion.tower.intermediate_size");
    hp_.layers = get_u32(gguf_, "fusion.tower.num_layers");
    hp_.patch = get_u32(gguf_, "fusion.tower.patch_size");
    hp_.image = get_u32(gguf_, "fusion.tower.image_size");
    hp_.early = get_u32(gguf_, "fusion.tower.early_layers");
    hp_.H = get_u32(gguf_, "fusion.llm.hidden_size");
    hp_.proj_depth = get_u32(gguf_, "fusion.projector.depth");
    hp_.align_count = get_u32(gguf_, "fusion.align.count");
    hp_.align_heads = get_u32(gguf_, "fusion.align.heads");
    hp_.window = get_u32(gguf_, "fusion.window_size");
    hp_.eps = gguf_get_val_f32(gguf_, gguf_find_key(gguf_, "fusion.tower.layer_norm_eps"));
    hp_.align_eps = gguf_get_val_f32(gguf_, gguf_find_key(gguf_, "fusion.align.layer_norm_eps"));
}

ggml_tensor * Vision::w(const std::string & name) const {
    ggml_tensor * t = ggml_get_tensor(weights_, name.c_str());
    if (!t) throw Error(FE_ERR_BUNDLE, "vision.gguf has no tensor " + name + ".", "re-export the bundle");
    return t;
}

std::vector<float> Vision::encode(const std::vector<float> & pixels, int B, const std::vector<float> & inst,
                                  const std::vector<int> & keep) {
    const VisionHparams & h = hp_;
    const int D = h.D, N = h.N(), S = h.image, T = int(keep.size()), K = N + T, hd = D / h.heads;
    Graph g(8192 + 64 * size_t(h.layers));
    ggml_context * c = g.ctx;
    // patch embedding as a matmul on host-cut patches (B,N,3*p*p) in f32 (ggml_conv_2d would
    // round the pixels to f16 in its im2col)
    const int pp = 3 * h.patch * h.patch, P = h.P();
    ggml_tensor * px = g.input(GGML_TYPE_F32, {pp, N, B});
    ggml_tensor * kernel = w("vision.patch.weight");
    ggml_tensor * x = ggml_mul_mat(c, ggml_reshape_2d(c, kernel, pp, D), px);                     // (B,N,D)
    x = ggml_add(c, ggml_add(c, x, w("vision.patch.bias")), w("vision.pos"));
    // mask_late: padded instruct keys off. Early layers: the reference overwrites the
    // instruct-query rows' scores with one value, so those rows attend uniformly to ALL K keys:
    // probabilities * keep_rows (1 on patch rows) + uniform (1/K on instruct rows).
    ggml_tensor * inst_in = nullptr, * mask_late = nullptr, * keep_rows = nullptr, * uniform = nullptr;
    if (T) {
        if (B != 1) throw Error(FE_ERR_INTERNAL, "guided vision runs one tile.", "report this");
        inst_in = g.input(GGML_TYPE_F32, {h.H, T});
        ggml_tensor * st = inst_in;                                     // aux_projector: (T,H) → (T,D)
        for (int n = 0; n < h.proj_depth; ++n) {
            if (n) st = ggml_gelu_erf(c, st);
            st = linear(c, st, w("aux_projector." + std::to_string(n) + ".weight"),
                        w("aux_projector." + std::to_string(n) + ".bias"));
        }
        x = ggml_concat(c, x, ggml_reshape_3d(c, st, D, T, 1), 1);     // (1,K,D)
        mask_late = g.input(GGML_TYPE_F32, {K, K});
        keep_rows = g.input(GGML_TYPE_F32, {K, K});
        uniform = g.input(GGML_TYPE_F32, {K, K});
    }
    auto rows_n = [&](ggml_tensor * t) { return ggml_view_3d(c, t, D, N, B, t->nb[1], t->nb[2], 0); };
    const int E = h.early;
    ggml_tensor * early = rows_n(x), * late = nullptr;
    for (int j = 0; j < h.layers; ++j) {
        const std::string p = "vision.layers." + std::to_string(j) + ".";
        ggml_tensor * y = layer_norm(c, x, w(p + "ln1.weight"), w(p + "ln1.bias"), h.eps);
        ggml_tensor * qkv = linear(c, y, w(p + "qkv.weight"), w(p + "qkv.bias"));               // (B,K,3D)
        auto head = [&](int which) {                                                           // → (B,h,K,hd)
            ggml_tensor * v = ggml_view_3d(c, qkv, D, K, B, qkv->nb[1], qkv->nb[2], size_t(which) * D * sizeof(float));
            v = ggml_reshape_4d(c, ggml_cont(c, v), hd, h.heads, K, B);
            return ggml_permute(c, v, 0, 2, 1, 3);
        };
        ggml_tensor * q = head(0), * k = head(1);
        ggml_tensor * v = ggml_cont(c, ggml_permute(c, ggml_reshape_4d(c, ggml_cont(c, ggml_view_3d(
            c, qkv, D, K, B, qkv->nb[1], qkv->nb[2], size_t(2) * D * sizeof(float))), hd, h.heads, K, B), 1, 2, 0, 3));
        ggml_tensor * kq = ggml_mul_mat(c, k, q);                                              // (B,h,Kq,Kk)
        kq = ggml_soft_max_ext(c, kq, mask_late, 1.0f / std::sqrt(float(hd)), 0.0f);
        if (T && j < E) kq = ggml_add(c, ggml_mul(c, kq, keep_rows), uniform);
        ggml_tensor * o = ggml_mul_mat(c, v, kq);                                              // (B,h,K,hd)
        o = ggml_reshape_3d(c, ggml_cont(c, ggml_permute(c, o, 0, 2, 1, 3)), D, K, B);
        x = ggml_add(c, x, linear(c, o, w(p + "out.weight"), w(p + "out.bias")));
        y = layer_norm(c, x, w(p + "ln2.weight"), w(p + "ln2.bias"), h.eps);
        y = linear(c, gelu_tanh(c, linear(c, y, w(p + "fc1.weight"), w(p + "fc1.bias"))), w(p + "fc2.weight"), w(p + "fc2.bias"));
        x = ggml_add(c, x, y);                                                                 // hs[j+1]
        if (j + 1 < E) early = ggml_add(c, early, rows_n(x));
        else if (j + 1 < 2 * E) late = late ? ggml_add(c, late, rows_n(x)) : rows_n(x);
    }
    ggml_tensor * last = ggml_cont(c, rows_n(x));
    ggml_tensor * early_m = ggml_scale(c, early, 1.0f / E);
    ggml_tensor * late_m = late ? ggml_scale(c, late, 1.0f / E) : ggml_scale(c, last, 0.0f);
    ggml_tensor * feats = ggml_concat(c, ggml_concat(c, last, ggml_cont(c, early_m), 0), ggml_cont(c, late_m), 0);
    for (int n = 0; n < h.proj_depth; ++n) {                                                  // mm_projector → (B,N,H)
        if (n) feats = ggml_gelu_erf(c, feats);
        feats = linear(c, feats, w("mm_projector." + std::to_string(n) + ".weight"), w("mm_projector." + std::to_string(n) + ".bias"));
    }
    g.run(feats, threads_, [&] {
        float * dst = static_cast<float *>(px->data);
        const int p = h.patch;
        for (int b = 0; b < B; ++b)
            for (int pr = 0; pr < P; ++pr)
                for (int pc = 0; pc < P; ++pc, dst += pp)
                    for (int ch = 0; ch < 3; ++ch)
                        for (int ky = 0; ky < p; ++ky)
                            std::memcpy(dst + (ch * p + ky) * p,
                                        &pixels[((size_t(b) * 3 + ch) * S + pr * p + ky) * S + pc * p], p * sizeof(float));
        if (!T) return;
        std::memcpy(inst_in->data, inst.data(), ggml_nbytes(inst_in));
        float * ml = static_cast<float *>(mask_late->data), * kr = static_cast<float *>(keep_rows->data);
        float * un = static_cast<float *>(uniform->data);
        for (int r = 0; r < K; ++r)
            for (int col = 0; col < K; ++col) {
                const size_t i = size_t(r) * K + col;
                ml[i] = (col < N || keep[col - N]) ? 0.0f : -INFINITY;
                kr[i] = r < N ? 1.0f : 0.0f;
                un[i] = r < N ? 0.0f : 1.0f / float(K);
            }
    });
    std::vector<float> out(ggml_nelements(feats));
    std::memcpy(out.data(), feats->data, out.size() * sizeof(float));
    return out;
}

std::vector<float> Vision::align(int k, const float * h_inst, const float * latents, int q,
                                 const std::vector<float> & windows, int W) {
    const int H = hp_.H, nh = hp_.align_heads, hd = H / nh;
    const float eps = hp_.align_eps;
    const std::string p = "align." + std::to_string(k) + ".";
    Graph g(1024);
    ggml_context * c = g.ctx;
    ggml_tensor * hi = g.input(GGML_TYPE_F32, {H, 1});
    ggml_tensor * lat = g.input(GGML_TYPE_F32, {H, q});
    ggml_tensor * win = g.input(GGML_TYPE_F32, {H, W, q});
    ggml_tensor * x = linear(c, ggml_concat(c, ggml_repeat(c, hi, lat), lat, 0), w(p + "proj_in.weight"), nullptr);  // (q,H)
    ggml_tensor * ctx = linear(c, win, w(p + "proj_context.weight"), nullptr);                                      // (q,W,H)
    ggml_tensor * qh = linear(c, layer_norm(c, x, w(p + "q_norm.weight"), w(p + "q_norm.bias"), eps), w(p + "q.weight"), nullptr);
    ggml_tensor * kh = linear(c, layer_norm(c, ctx, w(p + "k_norm.weight"), w(p + "k_norm.bias"), eps), w(p + "k.weight"), nullptr);
    ggml_tensor * vh = linear(c, layer_norm(c, ctx, w(p + "v_norm.weight"), w(p + "v_norm.bias"), eps), w(p + "v.weight"), nullptr);
    qh = ggml_permute(c, ggml_reshape_4d(c, qh, hd, nh, 1, q), 0, 2, 1, 3);                  // (q,h,1,hd)
    kh = ggml_permute(c, ggml_reshape_4d(c, kh, hd, nh, W, q), 0, 2, 1, 3);                  // (q,h,W,hd)
    vh = ggml_cont(c, ggml_permute(c, ggml_reshape_4d(c, vh, hd, nh, W, q), 1, 2, 0, 3));    // (q,h,hd,W)
    ggml_tensor * att = ggml_soft_max_ext(c, ggml_mul_mat(c, kh, qh), nullptr, 1.0f / std::sqrt(float(hd)), 0.0f);
    ggml_tensor * a = ggml_mul_mat(c, vh, att);                                              // (q,h,1,hd)
    a = ggml_reshape_2d(c, ggml_cont(c, ggml_permute(c, a, 0, 2, 1, 3)), H, q);
    a = linear(c, a, w(p + "o.weight"), nullptr);
    ggml_tensor * y = layer_norm(c, ggml_add(c, a, x), w(p + "norm.weight"), w(p + "norm.bias"), eps);
    y = linear(c, ggml_gelu_erf(c, linear(c, y, w(p + "mlp1.weight"), nullptr)), w(p + "mlp2.weight"), nullptr);
    ggml_tensor * out = ggml_add(c, y, lat);
    g.run(out, threads_, [&] {
        std::memcpy(hi->data, h_inst, size_t(H) * sizeof(float));
        std::memcpy(lat->data, latents, size_t(H) * q * sizeof(float));
        std::memcpy(win->data, windows.data(), ggml_nbytes(win));
    });
    std::vector<float> res(size_t(H) * q);
    std::memcpy(res.data(), out->data, res.size() * sizeof(float));
    return res;
}

}  // namespace fe
