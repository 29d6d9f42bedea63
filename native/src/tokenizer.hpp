// The runtime tokenizer (runtime/tokenizer.py) in C++: token ids identical to the Python runtime.
//  * SentencePiece-style files with `legacy: false` (Phi-3.5): transformers' slow non-legacy
//    rules — "▁" before the whole text, added tokens split out with their rstrip/lstrip flags,
//    BPE (merge ranks, byte fallback) per segment, a lone leading "▁" dropped before a named
//    special token — implemented here from tokenizer.json.
//  * byte-level BPE (LLaMA-3): llama.cpp's tokenizer of llm.gguf (the same ids; tested).
// Decoding follows tokenizer.json's decoder chain (Replace/ByteFallback/Strip, or ByteLevel).
#pragma once
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

struct llama_vocab;

namespace fe {

struct AddedToken {
    std::string content;
    int id;
    bool lstrip, rstrip, special;
};

class Tokenizer {
public:
    void load(const std::string & dir, const llama_vocab * vocab);
    std::vector<int> encode(const std::string & text) const;      // with the default special tokens
    std::string decode(const std::vector<int> & ids) const;       // special tokens skipped
    int token_to_id(const std::string & token) const;             // -1 when unknown
    int bos_id() const { return bos_; }
    bool sentencepiece() const { return spm_; }

private:
    std::vector<int> encode_slow(const std::string & text) const;
    std::vector<int> bpe(const std::string & segment) const;
    std::vector<int> encode_llama(const std::string & text) const;

    bool spm_ = false, slow_ = false, add_bos_ = false, add_eos_ = false, cleanup_ = false, prefix_space_ = true;
    int bos_ = -1, eos_ = -1, unk_ = -1, spiece_ = -1;
    std::unordered_map<std::string, int> vocab_;
    std::vector<std::string> id_to_token_;
    std::map<std::pair<int, int>, std::pair<int, int>> merges_;   // (a, b) → (rank, merged id)
    std::vector<AddedToken> added_;
    std::set<int> special_ids_, named_special_ids_;
    const llama_vocab * llama_vocab_ = nullptr;
};

}  // namespace fe
