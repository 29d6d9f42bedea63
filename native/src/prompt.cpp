#include "prompt.hpp"

#include "error.hpp"
#include "tokenizer.hpp"

namespace fe {
namespace {

const std::string kImage = "<image>", kLatent = "<latent_image>", kStart = "<vision_start>", kEnd = "<vision_end>";
const std::string kPlaceholder = "<image-placeholder>";
constexpr int kMarkLatent = -1, kMarkImage = -2;

struct Template {
    std::string system, user, assistant, sep;
};

Template get_template(const std::string & name) {
    if (name == "phi_3")
        return {"<|system|>\nYou are a helpful AI assistant.", "\n<|user|>\n", "\n<|assistant|>\n", "<|end|>"};
    if (name == "llama_3")
        return {"<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful, highly intelligent language and vision "
                "assistant. You are able to understand the visual content that the user provides, and assist the user "
                "with a variety of tasks using natural language. Whenever an image is present in the conversation, very "
                "carefully examine it and consider its content when formulating your response.",
                "<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                "<|eot_id|>"};
    throw Error(FE_ERR_BUNDLE, "unknown conversation template '" + name + "'.", "use a bundle with phi_3 or llama_3");
}

size_t count(const std::string & s, const std::string & sub) {
    size_t n = 0;
    for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
    return n;
}

std::string replace_all(std::string s, const std::string & from, const std::string & to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
    return s;
}

std::vector<std::string> split(const std::string & s, const std::string & sep) {
    std::vector<std::string> out;
    size_t a = 0;
    for (size_t p; (p = s.find(sep, a)) != std::string::npos; a = p + sep.size()) out.push_back(s.substr(a, p - a));
    out.push_back(s.substr(a));
    return out;
}

// Python's str.strip(): ASCII and Unicode whitespace at both ends (ASCII suffices for the checks here
// only if the text has no other spaces; the Unicode ones are handled too).
bool white_at(const std::string & s, size_t i, size_t & n) {
    const unsigned char c = s[i];
    if ((c >= 9 && c <= 13) || c == 32 || (c >= 0x1c && c <= 0x1f)) return n = 1, true;
    static const char * wide[] = {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82",
                                  "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85", "\xE2\x80\x86", "\xE2\x80\x87",
                                  "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                  "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
    for (const char * w : wide) {
        const std::string ws(w);
        if (s.compare(i, ws.size(), ws) == 0) return n = ws.size(), true;
    }
    return false;
}

std::string strip(const std::string & s) {
    size_t a = 0, b = s.size(), n = 0;
    while (a < b && white_at(s, a, n)) a += n;
    while (b > a) {
        size_t p = b - 1;
        while (p > a && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
        if (!white_at(s, p, n) || p + n != b) break;
        b = p;
    }
    return s.substr(a, b - a);
}

std::vector<int> join_chunks(const std::vector<std::vector<int>> & chunks, int mark, int bos) {
    const size_t off = (!chunks.empty() && !chunks[0].empty() && bos >= 0 && chunks[0][0] == bos) ? 1 : 0;
    std::vector<int> out;
    if (off) out.push_back(bos);
    for (size_t k = 0; k < chunks.size(); ++k) {
        if (k) out.push_back(mark);
        if (chunks[k].size() > off) out.insert(out.end(), chunks[k].begin() + off, chunks[k].end());
    }
    return out;
}

void check_question(const std::string & q) {
    if (strip(q).empty())
        throw Error(FE_ERR_PROMPT, "the question is empty.", "ask a question about the image, e.g. \"What is on the table?\"");
    for (const auto & r : {kImage, kLatent})
        if (q.find(r) != std::string::npos)
            throw Error(FE_ERR_PROMPT, "the question contains the reserved string '" + r + "'.",
                        "remove '" + r + "' from the question; to place the image inside the text write '" +
                        kPlaceholder + "' once");
    if (count(q, kPlaceholder) > 1)
        throw Error(FE_ERR_PROMPT, "the question contains '" + kPlaceholder + "' more than once; one image is one block.",
                    "keep a single '" + kPlaceholder + "'");
}

}  // namespace

PromptLayout build_prompt(const Tokenizer & tok, const std::string & tpl_name, const std::string & question,
                          int n_img, int q, int max_length) {
    const Template tpl = get_template(tpl_name);
    check_question(question);
    const std::string block = kStart + kImage + kEnd;
    const std::string message = question.find(kPlaceholder) != std::string::npos
        ? replace_all(question, kPlaceholder, block) : block + "\n" + question;
    const std::string bare = strip(replace_all(replace_all(replace_all(message, kImage, ""), kStart, ""), kEnd, ""));
    if (bare.empty())
        throw Error(FE_ERR_PROMPT, "the question has no text besides image markers.",
                    "ask a question about the image, e.g. \"What is on the table?\"");
    PromptLayout L;
    L.text = tpl.system + tpl.sep + tpl.user + kStart + kLatent + kEnd + message + tpl.sep + tpl.assistant;
    std::vector<std::vector<int>> pieces;
    for (const auto & part : split(L.text, kImage)) {
        std::vector<std::vector<int>> chunks;
        for (const auto & c : split(part, kLatent)) chunks.push_back(tok.encode(c));
        pieces.push_back(join_chunks(chunks, kMarkLatent, tok.bos_id()));
    }
    const std::vector<int> marked = join_chunks(pieces, kMarkImage, tok.bos_id());
    std::vector<size_t> marks;
    for (size_t i = 0; i < marked.size(); ++i)
        if (marked[i] == kMarkLatent || marked[i] == kMarkImage) marks.push_back(i);
    if (marks.size() != 2 || marked[marks[0]] != kMarkLatent || marked[marks[1]] != kMarkImage)
        throw Error(FE_ERR_PROMPT, "the rendered prompt does not hold exactly one latent and one image placeholder, "
                    "in that order.", "check the question and template");
    const size_t first = marks[0], second = marks[1];
    L.image_start = int(first);
    L.latent_start = int(second) - 1 + n_img;
    L.input_ids.assign(marked.begin(), marked.begin() + first);
    L.input_ids.insert(L.input_ids.end(), size_t(n_img), kImageSlot);
    L.input_ids.insert(L.input_ids.end(), marked.begin() + first + 1, marked.begin() + second);
    L.input_ids.insert(L.input_ids.end(), size_t(q), kLatentSlot);
    L.input_ids.insert(L.input_ids.end(), marked.begin() + second + 1, marked.end());
    if (max_length > 0 && L.seq_len() > max_length)
        throw Error(FE_ERR_PROMPT, "the prompt expands to " + std::to_string(L.seq_len()) +
                    " tokens, more than the model's limit of " + std::to_string(max_length) +
                    " (tokenizer_model_max_length).", "ask a shorter question, or choose a smaller query_len");
    L.num_image_tokens = n_img;
    L.num_latents = q;
    L.instruct_pos = L.seq_len() - 1;
    L.instruct_ids = tok.encode(bare);
    return L;
}

}  // namespace fe
