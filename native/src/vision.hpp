// FUSION's vision side in ggml, from vision.gguf (export/vision_gguf.py): the text-guided
// SigLIP tower + connector + mm_projector (export/ref_vision.py), aux_projector, and the
// interaction layers (export/ref_align.py). All shapes below are numpy order (row-major).
#pragma once
#include <string>
#include <vector>

struct ggml_context;
struct ggml_tensor;
struct gguf_context;

namespace fe {

struct VisionHparams {
    std::string tower_type, projector_type;
    int D = 0, heads = 0, inter = 0, layers = 0, patch = 0, image = 0, early = 0;
    int H = 0, proj_depth = 0, align_count = 0, align_heads = 0, window = 0;
    float eps = 1e-6f, align_eps = 1e-5f;
    int P() const { return image / patch; }
    int N() const { return P() * P(); }
};

class Vision {
public:
    ~Vision();
    void load(const std::string & path, int threads);
    const VisionHparams & hp() const { return hp_; }

    // pixels (B,3,S,S); inst (T,H) instruct embeddings and keep (T,) (id != 0), for B = 1 only
    // → image tokens (B,N,H)
    std::vector<float> encode(const std::vector<float> & pixels, int B, const std::vector<float> & inst,
                              const std::vector<int> & keep);
    // interaction layer k: h_inst (H,), latents (q,H), windows (q,W,H) → new latents (q,H)
    std::vector<float> align(int k, const float * h_inst, const float * latents, int q, const std::vector<float> & windows,
                             int W);

private:
    ggml_tensor * w(const std::string & name) const;
    VisionHparams hp_;
    gguf_context * gguf_ = nullptr;
    ggml_context * weights_ = nullptr;
    int threads_ = 1;
};

}  // namespace fe
