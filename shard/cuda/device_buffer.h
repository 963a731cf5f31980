// Device memory owned by one object, allocated with an error that says what was needed and what was free.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace gemma::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // ResourceExhausted "<what> needs N MiB of device memory; M MiB of T MiB are free" when it does not fit.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes, const std::string& what);
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace gemma::cuda
