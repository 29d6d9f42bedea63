// The LLM on llama.cpp, with FUSION's recursive alignment in the eval callback during the
// prefill (as runtime/backends/llamacpp_llm.py): tokens before the image block go in as ids,
// the span [first image row … last row] as embeddings in ONE ubatch; on each interaction
// layer's `l_out-<i>` the callback reads the instruct row and the latent rows, runs the
// alignment layer and writes the new latent rows back.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

struct llama_model;
struct llama_context;
struct llama_vocab;
struct ggml_tensor;
struct gguf_context;

namespace fe {

// (k, h_inst (H,), latents (q,H)) → new latents (q,H)
using AlignFn = std::function<std::vector<float>(int, const float *, const float *)>;

class LLM {
public:
    ~LLM();
    void load(const std::string & path, int threads, const std::string & device, bool parity,
              const std::vector<int> & interaction_layers);
    const llama_vocab * vocab() const;
    int n_embd() const { return n_embd_; }
    int n_vocab() const { return n_vocab_; }
    std::vector<float> embed(const std::vector<int> & ids) const;      // (S,H) rows of token_embd
    void reserve(int capacity);
    // embeds (S,H), ids (S,) → last-row logits (V,); align may be empty (no interactions)
    std::vector<float> prefill(const std::vector<float> & embeds, const std::vector<int> & ids, int image_start,
                               int latent_start, int num_latents, int instruct_pos, const AlignFn & align);
    std::vector<float> decode(int token);

    // callback state (public for the C callbacks)
    struct Hook {
        std::map<std::string, int> layer_of;           // "l_out-<i>" → interaction k
        bool active = false;
        int lat0 = 0, n_lat = 0, inst = 0, rows = 0, applied = 0;
        const AlignFn * align = nullptr;
        std::string error;
    } hook;
    const volatile int32_t * cancel_flag = nullptr;   // polled by llama.cpp's abort callback

private:
    std::vector<float> run(std::vector<int> * ids, const float * embeds, int n, bool logits);
    llama_model * model_ = nullptr;
    llama_context * ctx_ = nullptr;
    int threads_ = 1, n_embd_ = 0, n_vocab_ = 0, capacity_ = 0, n_batch_ = 0, length_ = 0;
    bool parity_ = true;
    // token_embd from the GGUF (memory read once, dequantized per row)
    std::vector<uint8_t> embd_;
    int embd_type_ = 0;
    size_t row_bytes_ = 0;
};

}  // namespace fe
