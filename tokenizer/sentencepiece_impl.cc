#include "tokenizer/sentencepiece_impl.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>

namespace gemma {

struct SentencePieceImpl::Api {
  void* (*create)(const char*, size_t, char**);
  void (*destroy)(void*);
  void (*free)(void*);
  int (*encode)(void*, const char*, size_t, int**, size_t*, char**);
  int (*decode)(void*, const int*, size_t, char**, size_t*, char**);
  int (*vocab_size)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  int (*piece_to_id)(void*, const char*, size_t);
  int (*is_unknown)(void*, int);
  char* (*id_to_piece)(void*, int, size_t*);
  std::string error;
};

namespace {

// The module: $GEMMA_SENTENCEPIECE_MODULE, else beside the executable, else where the build put it.
std::string ModulePath() {
  if (const char* env = std::getenv("GEMMA_SENTENCEPIECE_MODULE"); env && *env) return env;
  char exe[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, n);
    dir = dir.substr(0, dir.rfind('/'));
    const std::string beside = dir + "/libgemma_sentencepiece.so";
    if (::access(beside.c_str(), R_OK) == 0) return beside;
  }
  return GEMMA_SENTENCEPIECE_MODULE_PATH;
}

const SentencePieceImpl::Api* LoadApi() {
  static SentencePieceImpl::Api api;
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string path = ModulePath();
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib == nullptr) {
      const char* e = ::dlerror();
      api.error = "cannot load the SentencePiece module " + path + ": " + (e ? e : "unknown error");
      return;
    }
    auto sym = [&](const char* name) { return ::dlsym(lib, name); };
    api.create = reinterpret_cast<decltype(api.create)>(sym("gemma_spm_create"));
    api.destroy = reinterpret_cast<decltype(api.destroy)>(sym("gemma_spm_destroy"));
    api.free = reinterpret_cast<decltype(api.free)>(sym("gemma_spm_free"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("gemma_spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("gemma_spm_decode"));
    api.vocab_size = reinterpret_cast<decltype(api.vocab_size)>(sym("gemma_spm_vocab_size"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("gemma_spm_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("gemma_spm_eos_id"));
    api.piece_to_id = reinterpret_cast<decltype(api.piece_to_id)>(sym("gemma_spm_piece_to_id"));
    api.is_unknown = reinterpret_cast<decltype(api.is_unknown)>(sym("gemma_spm_is_unknown"));
    api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("gemma_spm_id_to_piece"));
    if (!api.create || !api.destroy || !api.free || !api.encode || !api.decode || !api.vocab_size || !api.bos_id ||
        !api.eos_id || !api.piece_to_id || !api.is_unknown || !api.id_to_piece) {
      api.error = "the SentencePiece module " + path + " lacks some functions; rebuild it";
    }
  });
  return &api;
}

std::string TakeError(const SentencePieceImpl::Api* api, char* e) {
  std::string s = e ? e : "unknown error";
  if (e) api->free(e);
  return s;
}

}  // namespace

SentencePieceImpl::SentencePieceImpl() = default;

SentencePieceImpl::~SentencePieceImpl() {
  if (handle_ != nullptr) api_->destroy(handle_);
}

std::string SentencePieceImpl::Load(std::string_view serialized) {
  api_ = LoadApi();
  if (!api_->error.empty()) return api_->error;
  char* error = nullptr;
  handle_ = api_->create(serialized.data(), serialized.size(), &error);
  if (handle_ != nullptr) return std::string();
  std::string why = TakeError(api_, error);
  // SentencePiece words a file that is not a model proto as its own source line and check; the caller's words
  // ("not a SentencePiece model") say it better.
  if (why.find("ParseFromArray") != std::string::npos) return "the file is not a serialized model proto";
  return why;
}

std::string SentencePieceImpl::Encode(std::string_view text, std::vector<int>* ids) const {
  int* out = nullptr;
  size_t n = 0;
  char* error = nullptr;
  if (!api_->encode(handle_, text.data(), text.size(), &out, &n, &error)) return TakeError(api_, error);
  ids->assign(out, out + n);
  api_->free(out);
  return std::string();
}

std::string SentencePieceImpl::Decode(const std::vector<int>& ids, std::string* text) const {
  char* out = nullptr;
  size_t n = 0;
  char* error = nullptr;
  if (!api_->decode(handle_, ids.data(), ids.size(), &out, &n, &error)) return TakeError(api_, error);
  text->assign(out, n);
  api_->free(out);
  return std::string();
}

int SentencePieceImpl::vocab_size() const { return api_->vocab_size(handle_); }
int SentencePieceImpl::bos_id() const { return api_->bos_id(handle_); }
int SentencePieceImpl::eos_id() const { return api_->eos_id(handle_); }
int SentencePieceImpl::PieceToId(std::string_view piece) const { return api_->piece_to_id(handle_, piece.data(), piece.size()); }
bool SentencePieceImpl::IsUnknown(int id) const { return api_->is_unknown(handle_, id) != 0; }

std::string SentencePieceImpl::IdToPiece(int id) const {
  size_t n = 0;
  char* p = api_->id_to_piece(handle_, id, &n);
  std::string s(p, n);
  api_->free(p);
  return s;
}

}  // namespace gemma
