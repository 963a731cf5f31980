// A C ABI over SentencePieceProcessor, built as a module that sentencepiece_impl.cc loads with RTLD_DEEPBIND.
// Why: Debian's libsentencepiece carries its own protobuf (3.14) whose symbols clash with the system
// libprotobuf (3.21) that gRPC uses; loaded this way its references bind to its own copy.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

char* Copy(const std::string& s, size_t* len) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  if (len) *len = s.size();
  return out;
}

}  // namespace

extern "C" {

// Returns a handle, or null with *error set (free it with gemma_spm_free).
void* gemma_spm_create(const char* bytes, size_t len, char** error) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  const auto status = p->LoadFromSerializedProto(std::string(bytes, len));
  if (!status.ok()) {
    *error = Copy(status.ToString(), nullptr);
    delete p;
    return nullptr;
  }
  return p;
}

void gemma_spm_destroy(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }
void gemma_spm_free(void* p) { std::free(p); }

// On success *ids (free with gemma_spm_free) holds *count ids; else *error is set.
int gemma_spm_encode(void* h, const char* text, size_t len, int** ids, size_t* count, char** error) {
  std::vector<int> out;
  const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, len), &out);
  if (!status.ok()) {
    *error = Copy(status.ToString(), nullptr);
    return 0;
  }
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.size() + 1)));
  std::memcpy(*ids, out.data(), sizeof(int) * out.size());
  *count = out.size();
  return 1;
}

int gemma_spm_decode(void* h, const int* ids, size_t count, char** text, size_t* len, char** error) {
  std::string out;
  const auto status =
      static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + count), &out);
  if (!status.ok()) {
    *error = Copy(status.ToString(), nullptr);
    return 0;
  }
  *text = Copy(out, len);
  return 1;
}

int gemma_spm_vocab_size(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize(); }
int gemma_spm_bos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id(); }
int gemma_spm_eos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id(); }
int gemma_spm_piece_to_id(void* h, const char* piece, size_t len) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->PieceToId(std::string(piece, len));
}
int gemma_spm_is_unknown(void* h, int id) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->IsUnknown(id); }
// The piece of `id` (free with gemma_spm_free).
char* gemma_spm_id_to_piece(void* h, int id, size_t* len) {
  return Copy(static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id), len);
}

}  // extern "C"
