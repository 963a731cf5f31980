#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "tokenizer/sentencepiece_impl.h"
#include "tokenizer/utf8.h"

namespace gemma {
namespace {

// Length of the longest prefix of `s` that does not end inside a UTF-8 character.
size_t CompleteUtf8Prefix(std::string_view s) {
  size_t end = s.size();
  for (size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const unsigned char c = s[s.size() - back];
    if ((c & 0xc0) == 0x80) continue;  // continuation byte
    const int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
    if (static_cast<size_t>(len) > back) end = s.size() - back;
    break;
  }
  return end;
}

// Protobuf wire format: a varint at `*pos`, advancing it; false past the end.
bool ReadVarint(std::string_view s, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < s.size(); shift += 7) {
    const unsigned char b = s[(*pos)++];
    *value |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// Skips a field of wire type `wire` at `*pos`; for length-delimited fields also returns the payload.
bool SkipField(std::string_view s, size_t* pos, uint64_t wire, std::string_view* payload) {
  uint64_t n = 0;
  switch (wire) {
    case 0: return ReadVarint(s, pos, &n);
    case 1: n = 8; break;
    case 5: n = 4; break;
    case 2:
      if (!ReadVarint(s, pos, &n)) return false;
      break;
    default: return false;
  }
  if (n > s.size() - *pos) return false;
  if (payload) *payload = s.substr(*pos, n);
  *pos += n;
  return true;
}

// The type of every piece in a serialized ModelProto (`repeated SentencePiece pieces = 1`, each with
// `optional Type type = 3 [default = NORMAL]`). Hand-parsed because the library's generated proto header
// would tie us to its private protobuf copy (see sentencepiece_shim.cc).
std::vector<Tokenizer::PieceType> ReadPieceTypes(std::string_view model) {
  std::vector<Tokenizer::PieceType> types;
  size_t pos = 0;
  while (pos < model.size()) {
    uint64_t tag = 0;
    std::string_view piece;
    if (!ReadVarint(model, &pos, &tag) || !SkipField(model, &pos, tag & 7, &piece)) return {};
    if (tag >> 3 != 1 || (tag & 7) != 2) continue;
    auto type = Tokenizer::PieceType::kNormal;
    size_t p = 0;
    while (p < piece.size()) {
      uint64_t t = 0, v = 0;
      if (!ReadVarint(piece, &p, &t)) return {};
      if (t == (3 << 3)) {
        if (!ReadVarint(piece, &p, &v)) return {};
        type = static_cast<Tokenizer::PieceType>(v);
      } else if (!SkipField(piece, &p, t & 7, nullptr)) {
        return {};
      }
    }
    types.push_back(type);
  }
  return types;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<SentencePieceImpl> impl, std::vector<PieceType> piece_types)
    : impl_(std::move(impl)), piece_types_(std::move(piece_types)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory; give the SentencePiece model file in it "
                                                   "(tokenizer.model)"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open tokenizer model"));
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = FromBytes(ss.str());
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromBytes(std::string_view serialized) {
  auto impl = std::make_unique<SentencePieceImpl>();
  if (std::string err = impl->Load(serialized); !err.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("not a SentencePiece model: ", err));
  }
  std::vector<PieceType> types = ReadPieceTypes(serialized);
  if (types.size() != static_cast<size_t>(impl->vocab_size())) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the piece types of the SentencePiece model (",
                                                   types.size(), " for ", impl->vocab_size(), " pieces)"));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl), std::move(types)));
}

absl::Status Tokenizer::CheckFitsModel(int model_vocab, std::string_view where) const {
  if (vocab_size() <= model_vocab) return absl::OkStatus();  // a model may pad its embedding past the pieces
  return absl::InvalidArgumentError(absl::StrCat(
      std::string(where), " has ", vocab_size(), " pieces, more than the model's vocabulary (config.json vocab_size) ",
      model_vocab, ": they belong to different models; use the tokenizer.model published with the checkpoint"));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
  std::vector<int> ids;
  if (std::string err = impl_->Encode(text, &ids); !err.empty()) return absl::InternalError(err);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids) const {
  const int n = vocab_size();
  for (int32_t id : ids) {
    if (id < 0 || id >= n) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the tokenizer's vocabulary [0, ", n, ")"));
    }
  }
  std::string text;
  if (std::string err = impl_->Decode(std::vector<int>(ids.begin(), ids.end()), &text); !err.empty()) {
    return absl::InternalError(err);
  }
  return text;
}

int Tokenizer::vocab_size() const { return impl_->vocab_size(); }
int Tokenizer::bos_id() const { return impl_->bos_id(); }
int Tokenizer::eos_id() const { return impl_->eos_id(); }

std::string Tokenizer::IdToPiece(int id) const { return impl_->IdToPiece(id); }

int Tokenizer::PieceToId(std::string_view piece) const {
  const int id = impl_->PieceToId(piece);
  return impl_->IsUnknown(id) && piece != "<unk>" ? -1 : id;
}

absl::StatusOr<std::string> StreamingDecoder::Add(int32_t id) {
  // What was already read, decoded before `id` joins: a failure of either decode leaves the decoder as it was.
  ASSIGN_OR_RETURN(const std::string read,
                   tokenizer_->Decode(std::span<const int32_t>(ids_).subspan(prefix_offset_, read_offset_ - prefix_offset_)));
  ids_.push_back(id);
  auto text = tokenizer_->Decode(std::span<const int32_t>(ids_).subspan(prefix_offset_));
  if (!text.ok()) {
    ids_.pop_back();
    return text.status();
  }
  // SentencePiece renders an incomplete byte sequence as U+FFFD; such a tail (or a
  // character cut short) waits for the ids that complete it.
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  const std::string_view view = *text;
  const bool incomplete = (view.size() >= kReplacement.size() &&
                           view.substr(view.size() - kReplacement.size()) == kReplacement) ||
                          CompleteUtf8Prefix(view) != view.size();
  if (incomplete || view.size() <= read.size()) return std::string();
  std::string delta(view.substr(read.size()));
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return delta;
}

absl::StatusOr<std::string> StreamingDecoder::Flush() {
  const std::span<const int32_t> all(ids_);
  ASSIGN_OR_RETURN(const std::string text, tokenizer_->Decode(all.subspan(prefix_offset_)));
  ASSIGN_OR_RETURN(const std::string read, tokenizer_->Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_)));
  prefix_offset_ = read_offset_ = ids_.size();
  if (text.size() <= read.size()) return std::string();
  return text.substr(read.size());
}

}  // namespace gemma
