#include "tools/default_model.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "shard/checkpoint/checkpoint_writer.h"
#include "shard/model/model_config.h"

extern const unsigned char kEmbeddedTokenizer[];
extern const size_t kEmbeddedTokenizer_size;

namespace gemma {

std::string EmbeddedTokenizerBytes() {
  return std::string(reinterpret_cast<const char*>(kEmbeddedTokenizer), kEmbeddedTokenizer_size);
}

absl::StatusOr<std::string> EnsureDefaultModel() {
  namespace fs = std::filesystem;
  fs::path root;
  if (const char* d = std::getenv("GEMMA_CACHE_DIR"); d && *d) {
    root = d;
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    root = fs::path(x) / "gemma-serve";
  } else if (const char* h = std::getenv("HOME"); h && *h) {
    root = fs::path(h) / ".cache" / "gemma-serve";
  } else {
    root = fs::temp_directory_path() / "gemma-serve";
  }
  const fs::path dir = root / "default-tiny-v1";
  if (fs::exists(dir / "config.json")) return dir.string();
  const fs::path tmp = root / absl::StrCat(".default-tiny-", ::getpid());
  auto status = WriteRandomCheckpoint(tmp.string(), TinyShape(), {}, EmbeddedTokenizerBytes());
  if (!status.ok()) return status;
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);  // another process won the race; its copy is identical
    if (!fs::exists(dir / "config.json")) return absl::InternalError(absl::StrCat("cannot create ", dir.string()));
  }
  return dir.string();
}

}  // namespace gemma
