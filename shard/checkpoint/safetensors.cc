#include "shard/checkpoint/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

using nlohmann::json;

// Real headers are a few hundred kB; this bounds what a hostile length can make us parse.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::Status Bad(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

absl::Status ParseEntry(const std::string& name, const json& v, uint64_t data_size, absl::string_view source,
                        TensorEntry* out) {
  auto where = [&](absl::string_view what) { return Bad(source, absl::StrCat("tensor \"", name, "\": ", what)); };
  if (!v.is_object()) return where("entry must be an object");
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return where("missing string \"dtype\"");
  auto dtype = DTypeFromName(dt->get<std::string>());
  if (!dtype) return where(absl::StrCat("unknown dtype \"", dt->get<std::string>(), "\""));
  out->dtype = *dtype;

  auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) return where("missing array \"shape\"");
  if (shape->size() > 8) return where("shape has more than 8 dimensions");
  uint64_t elements = 1;
  for (const auto& d : *shape) {
    if (!d.is_number_unsigned()) return where("shape entries must be non-negative integers");
    const uint64_t dim = d.get<uint64_t>();
    if (dim > (1ull << 40) || (dim != 0 && elements > (1ull << 50) / dim)) return where("shape is implausibly large");
    elements *= dim;
    out->shape.push_back(static_cast<int64_t>(dim));
  }

  auto offsets = v.find("data_offsets");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return where("\"data_offsets\" must be [begin, end] with non-negative integers");
  }
  out->begin = (*offsets)[0].get<uint64_t>();
  out->end = (*offsets)[1].get<uint64_t>();
  if (out->begin > out->end) return where(absl::StrCat("data_offsets begin ", out->begin, " > end ", out->end));
  if (out->end > data_size) {
    return where(absl::StrCat("data_offsets end ", out->end, " is past the end of the data section (", data_size,
                              " bytes); the file is truncated or corrupt"));
  }
  const uint64_t expected = elements * static_cast<uint64_t>(DTypeSize(out->dtype));
  if (out->end - out->begin != expected) {
    return where(absl::StrCat("holds ", out->end - out->begin, " bytes but dtype ", DTypeName(out->dtype), " and shape need ",
                              expected));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t TensorEntry::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::string_view file, absl::string_view source) {
  if (file.size() < 8) {
    return Bad(source, absl::StrCat("file is ", file.size(), " bytes; a safetensors file needs at least 8"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  if (header_len > file.size() - 8) {
    return Bad(source, absl::StrCat("header length ", header_len, " runs past the end of the file (", file.size(),
                                    " bytes); the file is truncated or not safetensors"));
  }
  if (header_len > kMaxHeaderBytes) {
    return Bad(source, absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes));
  }
  const absl::string_view text = file.substr(8, header_len);
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad(source, "header is not valid JSON");
  if (!j.is_object()) return Bad(source, "header must be a JSON object");

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  const uint64_t data_size = file.size() - header.data_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return Bad(source, "__metadata__ must be an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return Bad(source, absl::StrCat("__metadata__ value of \"", m.key(), "\" must be a string"));
        header.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorEntry entry;
    RETURN_IF_ERROR(ParseEntry(it.key(), *it, data_size, source, &entry));
    header.tensors.emplace(it.key(), std::move(entry));
  }

  std::vector<std::pair<const std::string*, const TensorEntry*>> by_offset;
  for (const auto& [name, e] : header.tensors) by_offset.emplace_back(&name, &e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& prev = by_offset[i - 1];
    const auto& cur = by_offset[i];
    if (cur.second->begin < prev.second->end) {
      return Bad(source, absl::StrCat("tensors \"", *prev.first, "\" and \"", *cur.first, "\" overlap in the data section"));
    }
  }
  return header;
}

std::string SafetensorsHeaderBytes(const std::vector<TensorHeader>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  json j = json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    j[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + t.num_bytes}}};
    offset += t.num_bytes;
  }
  std::string text = j.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace gemma
