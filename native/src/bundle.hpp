// The bundle folder: fusion_bundle.json facts the native runtime needs, and its file paths.
#pragma once
#include <string>
#include <vector>

namespace fe {

struct BundleInfo {
    std::string dir, target, precision, template_name;
    std::string llm_file, vision_file, tokenizer_dir;
    bool parity = true;                   // f32 KV cache, flash attention off
    int query_len = 0, image_tokens = 0, max_length = 0;
    std::vector<int> query_lens, stop_ids, interaction_layers;
    int llm_layers = 0, hidden = 0;
};

BundleInfo read_bundle(const std::string & dir);   // throws Error(FE_ERR_BUNDLE)

}  // namespace fe
