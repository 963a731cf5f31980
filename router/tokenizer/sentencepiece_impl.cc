#include "router/tokenizer/sentencepiece_impl.h"

#include <sentencepiece_processor.h>

namespace gemma {

struct SentencePieceImpl::State {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceImpl::SentencePieceImpl() : state_(std::make_unique<State>()) {}
SentencePieceImpl::~SentencePieceImpl() = default;

std::string SentencePieceImpl::Load(std::string_view serialized) {
  const auto status = state_->processor.LoadFromSerializedProto(serialized);
  return status.ok() ? std::string() : status.ToString();
}

std::string SentencePieceImpl::Encode(std::string_view text, std::vector<int>* ids) const {
  const auto status = state_->processor.Encode(text, ids);
  return status.ok() ? std::string() : status.ToString();
}

std::string SentencePieceImpl::Decode(const std::vector<int>& ids, std::string* text) const {
  const auto status = state_->processor.Decode(ids, text);
  return status.ok() ? std::string() : status.ToString();
}

int SentencePieceImpl::vocab_size() const { return state_->processor.GetPieceSize(); }
int SentencePieceImpl::bos_id() const { return state_->processor.bos_id(); }
int SentencePieceImpl::eos_id() const { return state_->processor.eos_id(); }
int SentencePieceImpl::PieceToId(std::string_view piece) const { return state_->processor.PieceToId(piece); }
bool SentencePieceImpl::IsUnknown(int id) const { return state_->processor.IsUnknown(id); }

}  // namespace gemma
