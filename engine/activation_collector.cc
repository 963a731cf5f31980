#include "engine/activation_collector.h"

#include <algorithm>
#include <cstddef>

#include "absl/strings/str_cat.h"

namespace gemma {

absl::Status ActivationCollector::Add(const RowResult& row) {
  if (row.activation_rows == 0) return absl::OkStatus();
  const size_t rows = static_cast<size_t>(row.activation_rows);
  if (rows > positions_) {  // it would wrap onto its own rows
    return absl::InternalError(absl::StrCat("a row carried ", rows, " activation rows; ", positions_, " were asked"));
  }
  if (row.activations.size() != points_ || positions_ == 0) {
    return absl::InternalError(
        absl::StrCat("a row carried ", row.activations.size(), " activations for ", points_, " points asked"));
  }
  for (const std::vector<float>& a : row.activations) {
    const size_t width = a.size() / rows;
    if (width == 0 || a.size() % rows != 0 || (hidden_ != 0 && width != hidden_)) {
      return absl::InternalError(
          absl::StrCat("a row's activation of ", a.size(), " values does not hold ", rows, " rows of width ", hidden_));
    }
    hidden_ = width;
  }
  if (rings_.empty()) rings_.assign(points_, std::vector<float>(positions_ * hidden_));
  for (size_t r = 0; r < rows; ++r) {
    const size_t slot = (delivered_ + r) % positions_;
    for (size_t j = 0; j < points_; ++j) {
      std::copy_n(row.activations[j].begin() + static_cast<std::ptrdiff_t>(r * hidden_), hidden_,
                  rings_[j].begin() + static_cast<std::ptrdiff_t>(slot * hidden_));
    }
  }
  delivered_ += rows;
  return absl::OkStatus();
}

void ActivationCollector::Reset() {
  delivered_ = 0;
  rings_.clear();
}

std::vector<std::vector<float>> ActivationCollector::Take() {
  std::vector<std::vector<float>> out = std::move(rings_);
  // The last pass ended at slot delivered_ % positions_ (every pass delivers all positions but a cut-off one, and
  // the last is whole): a nonzero end means the ring starts there.
  const size_t start = positions_ == 0 ? 0 : delivered_ % positions_;
  if (start != 0) {
    for (std::vector<float>& ring : out) {
      std::rotate(ring.begin(), ring.begin() + static_cast<std::ptrdiff_t>(start * hidden_), ring.end());
    }
  }
  if (out.empty()) out.resize(points_);
  Reset();
  return out;
}

}  // namespace gemma
