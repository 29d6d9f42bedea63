#include "tokenizer.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"
#include "llama.h"

namespace fe {
namespace {

const std::string kSpiece = "\xE2\x96\x81";   // "▁"

nlohmann::json read_json(const std::string & path) {
    std::ifstream in(path);
    if (!in) throw Error(FE_ERR_BUNDLE, path + " does not exist.", "copy the bundle's tokenizer/ folder again");
    try {
        return nlohmann::json::parse(in);
    } catch (const std::exception & e) {
        throw Error(FE_ERR_BUNDLE, path + " is not valid JSON (" + e.what() + ").", "copy the bundle again");
    }
}

std::string content_of(const nlohmann::json & v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
    return "";
}

bool has_metaspace(const nlohmann::json & n) {
    if (n.is_object()) {
        if (n.value("type", "") == "Metaspace") return true;
        if (n.value("type", "") == "Replace" && n.contains("content") && n["content"] == kSpiece) return true;
        for (const auto & kv : n.items()) if (has_metaspace(kv.value())) return true;
    } else if (n.is_array()) {
        for (const auto & v : n) if (has_metaspace(v)) return true;
    }
    return false;
}

// UTF-8 helpers: the byte length of the character at s[i], and its code point.
size_t char_len(const std::string & s, size_t i) {
    const unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return std::min(n, s.size() - i);
}

uint32_t code_point(const std::string & s, size_t i, size_t n) {
    const unsigned char c = s[i];
    if (n == 1) return c;
    uint32_t cp = c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    return cp;
}

bool is_white(uint32_t c) {   // Unicode White_Space (Rust's char::is_whitespace)
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string replace_all(std::string s, const std::string & from, const std::string & to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
    return s;
}

// byte-level BPE's byte ↔ character table (GPT-2's bytes_to_unicode), inverted.
std::unordered_map<uint32_t, uint8_t> byte_level_inverse() {
    std::unordered_map<uint32_t, uint8_t> inv;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        inv[printable ? uint32_t(b) : uint32_t(256 + n++)] = uint8_t(b);
    }
    return inv;
}

// transformers' clean_up_tokenization, in its order.
std::string clean_up(std::string t) {
    static const char * pairs[][2] = {{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
                                      {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (auto & p : pairs) t = replace_all(t, p[0], p[1]);
    return t;
}

}  // namespace

void Tokenizer::load(const std::string & dir, const llama_vocab * vocab) {
    llama_vocab_ = vocab;
    const auto tok = read_json(dir + "/tokenizer.json");
    nlohmann::json cfg = nlohmann::json::object();
    {
        std::ifstream probe(dir + "/tokenizer_config.json");
        if (probe) cfg = read_json(dir + "/tokenizer_config.json");
    }
    spm_ = (tok.contains("normalizer") && has_metaspace(tok["normalizer"])) ||
           (tok.contains("pre_tokenizer") && has_metaspace(tok["pre_tokenizer"]));
    slow_ = spm_ && cfg.contains("legacy") && cfg["legacy"] == false;
    cleanup_ = cfg.value("clean_up_tokenization_spaces", false);
    prefix_space_ = !(cfg.contains("add_prefix_space") && cfg["add_prefix_space"] == false);
    const auto & model = tok.at("model");
    for (const auto & kv : model.at("vocab").items()) vocab_[kv.key()] = kv.value().get<int>();
    for (const auto & a : tok.at("added_tokens")) {
        AddedToken t{a.at("content").get<std::string>(), a.at("id").get<int>(), a.value("lstrip", false),
                     a.value("rstrip", false), a.value("special", false)};
        vocab_[t.content] = t.id;
        if (t.special) special_ids_.insert(t.id);
        added_.push_back(t);
    }
    id_to_token_.assign(vocab_.size() + 1, "");
    for (const auto & kv : vocab_) {
        if (kv.second >= int(id_to_token_.size())) id_to_token_.resize(kv.second + 1);
        id_to_token_[kv.second] = kv.first;
    }
    int rank = 0;
    for (const auto & m : model.value("merges", nlohmann::json::array())) {
        std::string a, b;
        if (m.is_array()) {
            a = m[0].get<std::string>(), b = m[1].get<std::string>();
        } else {
            const auto s = m.get<std::string>();
            const auto sp = s.find(' ');
            a = s.substr(0, sp), b = s.substr(sp + 1);
        }
        const int ia = token_to_id(a), ib = token_to_id(b), im = token_to_id(a + b);
        if (ia >= 0 && ib >= 0 && im >= 0) merges_.emplace(std::make_pair(ia, ib), std::make_pair(rank, im));
        ++rank;
    }
    bos_ = cfg.contains("bos_token") ? token_to_id(content_of(cfg["bos_token"])) : -1;
    eos_ = cfg.contains("eos_token") ? token_to_id(content_of(cfg["eos_token"])) : -1;
    unk_ = model.contains("unk_token") && model["unk_token"].is_string() ? token_to_id(model["unk_token"]) : -1;
    if (spm_) {
        add_bos_ = cfg.value("add_bos_token", true) && bos_ >= 0;
        add_eos_ = cfg.value("add_eos_token", false) && eos_ >= 0;
    }
    spiece_ = token_to_id(kSpiece);
    for (const char * k : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"})
        if (cfg.contains(k)) {
            const int id = token_to_id(content_of(cfg[k]));
            if (id >= 0) named_special_ids_.insert(id);
        }
    for (const auto & v : cfg.value("additional_special_tokens", nlohmann::json::array())) {
        const int id = token_to_id(content_of(v));
        if (id >= 0) named_special_ids_.insert(id);
    }
    if (!spm_ && !llama_vocab_)
        throw Error(FE_ERR_INTERNAL, "a byte-level tokenizer needs llama.cpp's vocabulary.", "report this");
    if (spm_ && !slow_)
        throw Error(FE_ERR_BUNDLE, "this SentencePiece tokenizer uses the legacy pipeline, which the native runtime "
                    "does not implement yet.", "use the Python runtime (fusion-edge ask) for this bundle");
}

int Tokenizer::token_to_id(const std::string & token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
}

std::vector<int> Tokenizer::encode(const std::string & text) const {
    if (!spm_) return encode_llama(text);
    std::vector<int> ids = encode_slow(text);
    if (add_bos_) ids.insert(ids.begin(), bos_);
    if (add_eos_) ids.push_back(eos_);
    return ids;
}

std::vector<int> Tokenizer::encode_llama(const std::string & text) const {
    std::vector<llama_token> out(text.size() + 16);
    int n = llama_tokenize(llama_vocab_, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()), true, true);
    if (n < 0) {
        out.resize(size_t(-n));
        n = llama_tokenize(llama_vocab_, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()), true, true);
    }
    if (n < 0) throw Error(FE_ERR_PROMPT, "llama.cpp could not tokenize the prompt.", "ask a shorter question");
    return std::vector<int>(out.begin(), out.begin() + n);
}

// transformers LlamaTokenizer.tokenize with legacy=False (runtime/tokenizer.py, _encode_slow).
std::vector<int> Tokenizer::encode_slow(const std::string & text0) const {
    if (text0.empty()) return {};
    std::string text = replace_all(text0, kSpiece, " ");
    if (prefix_space_) text = kSpiece + text;
    std::vector<int> ids;
    size_t seg = 0, i = 0;
    auto flush = [&](size_t end) {
        if (end > seg) {
            const auto part = bpe(replace_all(text.substr(seg, end - seg), " ", kSpiece));
            ids.insert(ids.end(), part.begin(), part.end());
        }
    };
    while (i < text.size()) {
        const AddedToken * hit = nullptr;          // leftmost-longest added token at i
        for (const auto & a : added_)
            if (text.compare(i, a.content.size(), a.content) == 0 && (!hit || a.content.size() > hit->content.size()))
                hit = &a;
        if (!hit) {
            i += char_len(text, i);
            continue;
        }
        size_t start = i, end = i + hit->content.size();
        if (hit->lstrip)
            while (start > seg) {
                size_t p = start - 1;
                while (p > seg && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
                if (!is_white(code_point(text, p, char_len(text, p)))) break;
                start = p;
            }
        flush(start);
        ids.push_back(hit->id);
        if (hit->rstrip)
            while (end < text.size()) {
                const size_t n = char_len(text, end);
                if (!is_white(code_point(text, end, n))) break;
                end += n;
            }
        seg = i = end;
    }
    flush(text.size());
    if (ids.size() > 1 && ids[0] == spiece_ && named_special_ids_.count(ids[1])) ids.erase(ids.begin());
    return ids;
}

// HF BPE on one word: characters (byte fallback for unknown ones), then merges by rank.
std::vector<int> Tokenizer::bpe(const std::string & word) const {
    std::vector<int> sym;
    for (size_t i = 0; i < word.size();) {
        const size_t n = char_len(word, i);
        const int id = token_to_id(word.substr(i, n));
        if (id >= 0) {
            sym.push_back(id);
        } else {
            for (size_t k = 0; k < n; ++k) {
                char buf[8];
                snprintf(buf, sizeof buf, "<0x%02X>", static_cast<unsigned char>(word[i + k]));
                const int b = token_to_id(buf);
                if (b >= 0) {
                    sym.push_back(b);
                } else if (unk_ >= 0 && !(sym.size() && sym.back() == unk_)) {
                    sym.push_back(unk_);       // fuse_unk
                }
            }
        }
        i += n;
    }
    while (sym.size() > 1) {
        int best = -1, best_rank = 0, best_id = 0;
        for (size_t p = 0; p + 1 < sym.size(); ++p) {
            const auto it = merges_.find({sym[p], sym[p + 1]});
            if (it != merges_.end() && (best < 0 || it->second.first < best_rank))
                best = int(p), best_rank = it->second.first, best_id = it->second.second;
        }
        if (best < 0) break;
        sym[best] = best_id;
        sym.erase(sym.begin() + best + 1);
    }
    return sym;
}

std::string Tokenizer::decode(const std::vector<int> & ids) const {
    std::string out;
    if (spm_) {                 // Replace ▁ → " ", ByteFallback, Fuse, Strip one leading " "
        for (int id : ids) {
            if (id < 0 || id >= int(id_to_token_.size()) || special_ids_.count(id)) continue;
            const std::string & t = id_to_token_[id];
            unsigned v = 0;
            if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && sscanf(t.c_str(), "<0x%2X>", &v) == 1)
                out.push_back(char(v));
            else
                out += replace_all(t, kSpiece, " ");
        }
        if (!out.empty() && out[0] == ' ') out.erase(0, 1);
    } else {                    // ByteLevel: characters back to bytes
        static const auto inv = byte_level_inverse();
        for (int id : ids) {
            if (id < 0 || id >= int(id_to_token_.size()) || special_ids_.count(id)) continue;
            const std::string & t = id_to_token_[id];
            std::string bytes;
            bool ok = true;
            for (size_t i = 0; i < t.size() && ok;) {
                const size_t n = char_len(t, i);
                const auto it = inv.find(code_point(t, i, n));
                if (it == inv.end()) ok = false; else bytes.push_back(char(it->second));
                i += n;
            }
            out += ok ? bytes : t;
        }
    }
    return cleanup_ ? clean_up(out) : out;
}

}  // namespace fe
