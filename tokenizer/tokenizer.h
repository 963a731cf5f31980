// Gemma's SentencePiece tokenizer: text <-> ids, special ids, incremental (streaming) decoding.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gemma {

class SentencePieceImpl;

// Immutable after creation; thread-safe.
class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // `serialized` is a SentencePiece ModelProto (the bytes of tokenizer.model).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromBytes(std::string_view serialized);
  ~Tokenizer();

  // Ids of `text`, without <bos>. InvalidArgument for text that is not UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  // InvalidArgument for ids outside [0, vocab_size()).
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  // -1 when the vocabulary has no such piece.
  int PieceToId(std::string_view piece) const;
  // InvalidArgument when this vocabulary has pieces the model (of `model_vocab` embeddings) has no row for: the two
  // come from different models, and every text would encode to ids the model refuses. `where` names the file.
  absl::Status CheckFitsModel(int model_vocab, std::string_view where) const;
  int start_of_turn_id() const { return PieceToId("<start_of_turn>"); }
  int end_of_turn_id() const { return PieceToId("<end_of_turn>"); }

  // A piece as SentencePiece stores it (a space is U+2581 '▁', a byte piece is "<0xNN>"); id in [0, vocab_size()).
  std::string IdToPiece(int id) const;
  // The piece types of SentencePiece's ModelProto.
  enum class PieceType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  // id in [0, vocab_size()).
  PieceType piece_type(int id) const { return piece_types_[id]; }

 private:
  Tokenizer(std::unique_ptr<SentencePieceImpl> impl, std::vector<PieceType> piece_types);
  std::unique_ptr<SentencePieceImpl> impl_;
  std::vector<PieceType> piece_types_;  // read from the ModelProto: libsentencepiece 0.1.97 has no IsUserDefined
};

// Turns a growing list of ids into text deltas that never split a UTF-8
// character: bytes of a character spread over byte-fallback tokens are held
// back until it is complete. Incremental, as TGI and vLLM detokenize: each id
// decodes only the ids since the last emitted text (from prefix_offset_), and
// the delta is what that adds to decoding the same window without the unread
// ids, so the window's context (a leading space, a partial character) is the
// same in both decodes. The window is a token or two, except while a character
// is incomplete: O(1) per id amortized. Not thread-safe; one per sequence.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  // Appends `id`; returns the newly completed text (possibly empty).
  absl::StatusOr<std::string> Add(int32_t id);
  // The text held back at the end (an incomplete character), flushed as is.
  absl::StatusOr<std::string> Flush();

 private:
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // first id of the decode window
  size_t read_offset_ = 0;    // ids before this one have had their text emitted
};

}  // namespace gemma
