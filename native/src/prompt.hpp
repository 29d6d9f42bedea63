// Prompt building (runtime/prompt.py, FUSION_SPEC §3): the same text, chunking and expansion.
#pragma once
#include <string>
#include <vector>

namespace fe {

class Tokenizer;

constexpr int kImageSlot = -200;
constexpr int kLatentSlot = -300;

struct PromptLayout {
    std::string text;
    std::vector<int> input_ids;          // (S,) with N kImageSlot and q kLatentSlot entries
    int image_start = 0, num_image_tokens = 0, latent_start = 0, num_latents = 0, instruct_pos = 0;
    std::vector<int> instruct_ids;       // the bare question, default special tokens
    int seq_len() const { return int(input_ids.size()); }
};

// Throws Error(FE_ERR_PROMPT) for the questions the Python runtime refuses.
PromptLayout build_prompt(const Tokenizer & tok, const std::string & tpl, const std::string & question,
                          int num_image_tokens, int num_latents, int max_length);

}  // namespace fe
