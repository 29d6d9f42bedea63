// Typed failure of the native runtime: a status code, a message and a fix (as runtime/errors.py).
#pragma once
#include <stdexcept>
#include <string>

#include "fusion_edge.h"

namespace fe {

struct Error : std::runtime_error {
    fe_status code;
    std::string fix;
    Error(fe_status c, const std::string & msg, std::string fix_text)
        : std::runtime_error(msg), code(c), fix(std::move(fix_text)) {}
};

}  // namespace fe
