#include "bundle.hpp"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"

namespace fe {
namespace {

bool is_file(const std::string & p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

nlohmann::json read_json(const std::string & path, const char * what) {
    std::ifstream in(path);
    if (!in) throw Error(FE_ERR_BUNDLE, path + " does not exist.", std::string("pass a bundle folder written by ") +
                         "`fusion-export MODEL --target gguf` (" + what + ")");
    try {
        return nlohmann::json::parse(in);
    } catch (const std::exception & e) {
        throw Error(FE_ERR_BUNDLE, path + " is not valid JSON (" + e.what() + ").", "copy the bundle again, or re-export it");
    }
}

}  // namespace

BundleInfo read_bundle(const std::string & dir) {
    BundleInfo b;
    b.dir = dir;
    auto m = read_json(dir + "/fusion_bundle.json", "its fusion_bundle.json is missing");
    try {
        b.target = m.at("target").get<std::string>();
        b.precision = m.at("precision").get<std::string>();
        const auto & comp = m.at("components");
        if (!comp.contains("llm") || comp["llm"].value("backend", "") != "llama.cpp")
            throw Error(FE_ERR_BUNDLE, "bundle " + dir + " (target " + b.target + ") has no llama.cpp LLM.",
                        "the native runtime runs gguf bundles: fusion-export MODEL --target gguf");
        if (!comp.contains("native_vision"))
            throw Error(FE_ERR_BUNDLE, "bundle " + dir + " has no vision.gguf (native_vision component).",
                        "re-export it with this fusion-edge: fusion-export MODEL --target gguf");
        b.llm_file = dir + "/" + comp["llm"]["files"][0].get<std::string>();
        b.parity = comp["llm"].value("kv_cache", "f16") == "f32";
        b.vision_file = dir + "/" + comp["native_vision"]["files"][0].get<std::string>();
        b.tokenizer_dir = dir + "/tokenizer";
        const auto & opt = m.at("options");
        b.query_len = opt.at("query_len").get<int>();
        b.image_tokens = opt.at("image_tokens").get<int>();
        b.query_lens = opt.at("query_lens").get<std::vector<int>>();
        const auto & pr = m.at("prompt");
        b.template_name = pr.at("template").get<std::string>();
        b.stop_ids = pr.at("stop_token_ids").get<std::vector<int>>();
        b.max_length = pr.value("max_length", 0);
        const auto & fu = m.at("fusion");
        b.interaction_layers = fu.at("interaction_layers").get<std::vector<int>>();
    } catch (const Error &) {
        throw;
    } catch (const std::exception & e) {
        throw Error(FE_ERR_BUNDLE, dir + "/fusion_bundle.json lacks a field the native runtime needs (" + e.what() + ").",
                    "re-export the bundle with fusion-export --target gguf");
    }
    for (const auto & f : {b.llm_file, b.vision_file, b.tokenizer_dir + "/tokenizer.json"})
        if (!is_file(f)) throw Error(FE_ERR_BUNDLE, "bundle file " + f + " is missing.", "copy the whole bundle folder again");
    return b;
}

}  // namespace fe
