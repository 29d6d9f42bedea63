// fusion_edge_cli: `ask --bundle B --image IMG --question Q [--max-new-tokens N] [--json] ...`
// through the C ABI. Errors: one `error:` / `fix:` pair on stderr, exit code 2.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "fusion_edge.h"
#include "fusion_edge_debug.h"
#include "stb/stb_image.h"

namespace {

int usage_error(const std::string & msg) {
    std::fprintf(stderr, "error: %s\nfix: fusion_edge_cli ask --bundle DIR --image FILE --question TEXT "
                 "[--max-new-tokens N] [--json] [--threads N] [--device auto|cpu|cuda] [--temperature T] [--top-p P] "
                 "[--top-k K] [--seed S] [--query-len Q]\n", msg.c_str());
    return 2;
}

int fe_error(fe_status st) {
    std::fprintf(stderr, "error: %s\n", fe_last_error());
    if (*fe_last_fix()) std::fprintf(stderr, "fix: %s\n", fe_last_fix());
    return st == FE_ERR_INTERNAL ? 1 : 2;
}

int print_piece(int32_t, const char * piece, void *) {
    std::fputs(piece, stdout);
    std::fflush(stdout);
    return 0;
}

bool parse_int(const char * s, long long & out) {
    char * end = nullptr;
    out = std::strtoll(s, &end, 10);
    return end && *end == 0 && end != s;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 2 || std::strcmp(argv[1], "ask") != 0) return usage_error("the first argument must be the command `ask`.");
    std::string bundle, image, question, device = "auto", dump;
    bool json = false, have_q = false;
    fe_ask_options o{64, 0.0f, 1.0f, 0, 0, 0};
    fe_open_options oo{0, nullptr};
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json") { json = true; continue; }
        if (i + 1 >= argc) return usage_error("option " + a + " needs a value.");
        const char * v = argv[++i];
        long long n = 0;
        if (a == "--bundle") bundle = v;
        else if (a == "--image") image = v;
        else if (a == "--question") question = v, have_q = true;
        else if (a == "--device") device = v;
        else if (a == "--dump") dump = v;
        else if (a == "--temperature") o.temperature = std::strtof(v, nullptr);
        else if (a == "--top-p") o.top_p = std::strtof(v, nullptr);
        else if (a == "--max-new-tokens" || a == "--threads" || a == "--top-k" || a == "--seed" || a == "--query-len") {
            if (!parse_int(v, n) || n < 0 || (a != "--seed" && n > 1 << 30)) return usage_error(a + " takes a non-negative integer, got '" + v + "'.");
            if (a == "--max-new-tokens") {
                if (n < 1) return usage_error("--max-new-tokens must be at least 1.");
                o.max_new_tokens = int32_t(n);
            } else if (a == "--threads") oo.threads = int32_t(n);
            else if (a == "--top-k") o.top_k = int32_t(n);
            else if (a == "--seed") o.seed = uint64_t(n);
            else o.query_len = int32_t(n);
        } else return usage_error("unknown option " + a + ".");
    }
    if (bundle.empty() || image.empty() || !have_q) return usage_error("--bundle, --image and --question are required.");
    int w = 0, h = 0, comp = 0;
    unsigned char * px = stbi_load(image.c_str(), &w, &h, &comp, 3);
    if (!px) {
        std::fprintf(stderr, "error: image file %s is not a readable image (%s).\nfix: use a complete JPEG/PNG/BMP file\n",
                     image.c_str(), stbi_failure_reason());
        return 2;
    }
    oo.device = device.c_str();
    fe_engine * e = nullptr;
    fe_status st = fe_open(bundle.c_str(), &oo, &e);
    if (st == FE_OK && !dump.empty()) st = fe_debug_set_dump_dir(e, dump.c_str());
    if (st == FE_OK) st = fe_look(e, px, w, h, 3 * w);
    stbi_image_free(px);
    if (st == FE_OK) st = fe_ask(e, question.c_str(), &o, json ? nullptr : print_piece, nullptr, nullptr);
    if (st != FE_OK) {
        const int rc = fe_error(st);
        fe_close(e);
        return rc;
    }
    if (json) {
        int32_t n = 0;
        const int32_t * ids = fe_answer_token_ids(e, &n);
        fe_stats s{};
        fe_get_stats(e, &s);
        nlohmann::json j = {{"text", fe_answer_text(e)}, {"token_ids", std::vector<int32_t>(ids, ids + n)},
                            {"backend", "native-ggml"},
                            {"timings", {{"preprocess_s", s.preprocess_s}, {"vision_global_s", s.vision_global_s},
                                         {"vision_main_s", s.vision_main_s}, {"prefill_s", s.prefill_s},
                                         {"ttft_s", s.ttft_s}, {"decode_s", s.decode_s},
                                         {"decode_tokens_per_s", s.decode_tokens_per_s},
                                         {"prompt_tokens", s.prompt_tokens}, {"new_tokens", s.new_tokens},
                                         {"query_len", s.query_len}}}};
        std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
        std::puts("");
    }
    fe_close(e);
    return 0;
}
