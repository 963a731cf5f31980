// Pimpl around SentencePieceProcessor; its header must not meet Abseil's (see DESIGN.md), so this header names neither.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gemma {

// Thread-safe after Load (SentencePieceProcessor's const methods are).
class SentencePieceImpl {
 public:
  SentencePieceImpl();
  ~SentencePieceImpl();
  // Empty string on success, else the library's error message.
  std::string Load(std::string_view serialized);
  std::string Encode(std::string_view text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int PieceToId(std::string_view piece) const;
  bool IsUnknown(int id) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace gemma
