// UTF-8 well-formedness, shared by the tokenizer and request validation.
#pragma once

#include <cstdint>
#include <string_view>

namespace gemma {

// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool IsValidUtf8(std::string_view text);

// How many characters `text` holds as a Python string would count them (its code points): every byte that does not
// continue a sequence starts one, so a character split across pieces counts where it starts.
int64_t Utf8Characters(std::string_view text);

}  // namespace gemma
