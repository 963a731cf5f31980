#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "shard/cuda/cuda_module.h"

namespace gemma {

absl::StatusOr<const CudaModuleApi*> LoadCudaModule() {
  static std::once_flag once;
  static absl::StatusOr<const CudaModuleApi*> loaded = absl::UnknownError("not loaded");
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("GEMMA_CUDA_MODULE"); env != nullptr && *env) candidates.push_back(env);
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back((exe.parent_path() / "libgemma_cuda.so").string());
#ifdef GEMMA_CUDA_MODULE_BUILD_PATH
    candidates.push_back(GEMMA_CUDA_MODULE_BUILD_PATH);
#endif
    std::vector<std::string> tried;
    for (const std::string& path : candidates) {
      if (!std::filesystem::exists(path)) {
        tried.push_back(path + " (absent)");
        continue;
      }
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        tried.push_back(absl::StrCat(path, " (", dlerror(), ")"));
        continue;
      }
      using Entry = const CudaModuleApi* (*)();
      auto entry = reinterpret_cast<Entry>(dlsym(handle, "gemma_cuda_module_v1"));
      const CudaModuleApi* api = entry != nullptr ? entry() : nullptr;
      if (api == nullptr || api->version != kCudaModuleVersion) {
        tried.push_back(path + " (not this build's CUDA module)");
        continue;
      }
      loaded = api;
      return;
    }
    loaded = absl::UnimplementedError(absl::StrCat(
        "this build has no CUDA backend module (libgemma_cuda.so; built where nvcc is found); looked at: ",
        absl::StrJoin(tried, ", ")));
  });
  return loaded;
}

}  // namespace gemma
