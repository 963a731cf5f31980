#include "shard/checkpoint/checkpoint.h"

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace gemma {
namespace {

namespace fs = std::filesystem;

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// The shard file names listed by model.safetensors.index.json, and which file holds each tensor.
absl::Status ReadIndex(const std::string& path, std::vector<std::string>* files,
                       std::map<std::string, std::string>* weight_map) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  auto wm = j.find("weight_map");
  if (wm == j.end()) return absl::InvalidArgumentError(absl::StrCat(path, ": missing object \"weight_map\""));
  if (!wm->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"weight_map\" is ", wm->type_name(), "; allowed: an object of tensor name: file name"));
  }
  std::set<std::string> seen;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(path, ": weight_map[\"", it.key(), "\"] must be a file name"));
    const std::string file = it->get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(path, ": weight_map[\"", it.key(), "\"] names \"", file,
                                                     "\"; allowed: a file name inside the checkpoint directory"));
    }
    (*weight_map)[it.key()] = file;
    if (seen.insert(file).second) files->push_back(file);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory; expected a Hugging Face Gemma checkpoint directory"));
  }
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;
  ASSIGN_OR_RETURN(ckpt->config_, LoadModelConfig((fs::path(dir) / "config.json").string()));

  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(fs::path(dir) / "model.safetensors")) {
    files.push_back("model.safetensors");
  } else if (fs::exists(index)) {
    RETURN_IF_ERROR(ReadIndex(index.string(), &files, &weight_map));
    for (const auto& [tname, file] : weight_map) {
      if (!fs::exists(fs::path(dir) / file)) {
        return absl::NotFoundError(absl::StrCat(index.string(), ": weight_map[\"", tname, "\"] names ", file,
                                                ", which is not in ", dir));
      }
    }
  } else {
    return absl::NotFoundError(absl::StrCat(dir, ": has neither model.safetensors nor model.safetensors.index.json"));
  }

  for (const auto& name : files) {
    const std::string path = (fs::path(dir) / name).string();
    ASSIGN_OR_RETURN(auto mapped, MappedFile::Open(path));
    ASSIGN_OR_RETURN(auto header, ParseSafetensors(mapped.bytes(), path));
    const int file_index = static_cast<int>(ckpt->files_.size());
    for (const auto& [tname, entry] : header.tensors) {
      if (!weight_map.empty()) {
        auto wm = weight_map.find(tname);
        if (wm == weight_map.end() || wm->second != name) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": tensor \"", tname, "\" is ",
              wm == weight_map.end() ? "not listed in model.safetensors.index.json"
                                     : absl::StrCat("assigned to ", wm->second, " by model.safetensors.index.json")));
        }
      }
      if (!ckpt->tensors_.emplace(tname, Located{file_index, entry}).second) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", tname, "\" appears in more than one file"));
      }
    }
    ckpt->files_.push_back(std::move(mapped));
    ckpt->headers_.push_back(std::move(header));
  }
  for (const auto& [tname, file] : weight_map) {
    if (!ckpt->tensors_.count(tname)) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": lists tensor \"", tname, "\" in ", file,
                                                     ", but that file does not contain it"));
    }
  }
  return ckpt;
}

absl::StatusOr<StoredTensor> Checkpoint::Get(const std::string& name, const std::vector<int64_t>& expected_shape,
                                             std::initializer_list<DType> allowed) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(dir_, ": missing tensor \"", name, "\" (expected shape ",
                                                   ShapeString(expected_shape), ")"));
  }
  const MappedFile& file = files_[it->second.file_index];
  const TensorEntry& e = it->second.entry;
  if (std::find(allowed.begin(), allowed.end(), e.dtype) == allowed.end()) {
    std::vector<std::string> names;
    for (DType d : allowed) names.emplace_back(DTypeName(d));
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", name, "\" has dtype ", DTypeName(e.dtype),
                                                   "; allowed: ", absl::StrJoin(names, ", ")));
  }
  if (e.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": tensor \"", name, "\" has shape ", ShapeString(e.shape),
                                                   " but config.json implies ", ShapeString(expected_shape)));
  }
  return Raw(name);
}

absl::StatusOr<StoredTensor> Checkpoint::Raw(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat(dir_, ": no tensor \"", name, "\""));
  const MappedFile& file = files_[it->second.file_index];
  const TensorEntry& e = it->second.entry;
  const uint64_t offset = headers_[it->second.file_index].data_offset + e.begin;
  return StoredTensor{name, file.path(), e.dtype, e.shape, file.bytes().data() + offset, e.end - e.begin};
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, _] : tensors_) names.push_back(name);
  return names;
}

uint64_t Checkpoint::TotalBytes() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f.bytes().size();
  return n;
}

}  // namespace gemma
