// A read-only memory mapping of a whole file (weights are used in place, never copied).
#pragma once

#include "absl/strings/string_view.h"
#include <string>


#include "absl/status/statusor.h"

namespace gemma {

// Move-only owner of one mapping. Thread-safe for concurrent reads.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  // Asks the kernel to back the mapping with 2 MB pages (collapsing the page
  // cache where it is in small pages). Best effort; returns whether it took.
  bool CollapseToHugePages() const;
  absl::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  void Reset();
  void* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace gemma
