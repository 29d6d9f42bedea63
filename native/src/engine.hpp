// One opened bundle: the pipeline of runtime/pipeline.py in C++ (look → ask), behind the C ABI.
#pragma once
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "fusion_edge.h"
#include "llm.hpp"
#include "pooling.hpp"
#include "preprocess.hpp"
#include "tokenizer.hpp"
#include "vision.hpp"

namespace fe {

// Stage outputs kept for the parity tests when a dump folder is set (fe_debug_set_dump_dir).
struct Dump {
    std::string dir;
    std::vector<float> align_in, align_h, align_out;   // per interaction layer, concatenated
};

class Engine {
public:
    void open(const std::string & dir, int threads, const std::string & device);
    void look(const Image8 & img);
    void ask(const std::string & question, const fe_ask_options & o, fe_token_callback cb, void * user,
             const volatile int32_t * cancel);

    std::vector<int> tokenize(const std::string & t) const { return tok_.encode(t); }
    std::mutex mu;                 // one call at a time per handle
    std::string text;
    std::vector<int32_t> token_ids;
    std::vector<float> first_logits;   // (V,) of the first generated step
    fe_stats stats{};
    Dump dump;

private:
    const std::pair<std::vector<float>, std::vector<float>> & pooled(int q);
    void write_dump(const std::string & name, const std::vector<float> & v) const;
    BundleInfo b_;
    Vision vision_;
    LLM llm_;
    Tokenizer tok_;
    bool has_scene_ = false;
    Tiles tiles_;
    Grid grid_;
    std::map<int, std::pair<std::vector<float>, std::vector<float>>> pooled_;   // q → (latents, windows)
    double preprocess_s_ = 0, vision_global_s_ = 0;
};

}  // namespace fe
