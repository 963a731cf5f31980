// UTF-8 well-formedness, shared by the tokenizer and request validation.
#pragma once

#include <string_view>

namespace gemma {

// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view text);

}  // namespace gemma
