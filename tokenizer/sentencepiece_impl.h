// SentencePiece behind a C ABI module (see sentencepiece_shim.cc for why); this header names no library types.
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
  // Empty string on success, else what went wrong.
  std::string Load(std::string_view serialized);
  std::string Encode(std::string_view text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int PieceToId(std::string_view piece) const;
  bool IsUnknown(int id) const;
  std::string IdToPiece(int id) const;

  struct Api;  // the module's functions (defined in the .cc)

 private:
  const Api* api_ = nullptr;
  void* handle_ = nullptr;
};

}  // namespace gemma
