#include "shard/runtime/tp_group.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

enum Op : uint8_t { kStep = 1, kHeartbeat = 2, kStop = 3 };

void PutU32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void PutStr(std::string& s, const std::string& v) {
  PutU32(s, static_cast<uint32_t>(v.size()));
  s.append(v);
}

class Reader {
 public:
  explicit Reader(absl::string_view b) : b_(b) {}
  bool U32(uint32_t* v) {
    if (b_.size() < 4) return false;
    std::memcpy(v, b_.data(), 4);
    b_.remove_prefix(4);
    return true;
  }
  bool I32s(uint32_t n, std::vector<int32_t>* out) {
    if (n > b_.size() / 4) return false;
    out->resize(n);
    std::memcpy(out->data(), b_.data(), 4 * static_cast<size_t>(n));
    b_.remove_prefix(4 * static_cast<size_t>(n));
    return true;
  }
  bool F32s(uint32_t n, std::vector<float>* out) {
    if (n > b_.size() / 4) return false;
    out->resize(n);
    std::memcpy(out->data(), b_.data(), 4 * static_cast<size_t>(n));
    b_.remove_prefix(4 * static_cast<size_t>(n));
    return true;
  }
  bool Str(std::string* out) {
    uint32_t n;
    if (!U32(&n) || n > b_.size()) return false;
    out->assign(b_.data(), n);
    b_.remove_prefix(n);
    return true;
  }
  bool done() const { return b_.empty(); }

 private:
  absl::string_view b_;
};

}  // namespace

std::string EncodeStep(std::span<const SequenceStep> batch) {
  std::string s(1, static_cast<char>(kStep));
  PutU32(s, static_cast<uint32_t>(batch.size()));
  for (const auto& st : batch) {
    PutU32(s, static_cast<uint32_t>(st.tokens.size()));
    s.append(reinterpret_cast<const char*>(st.tokens.data()), 4 * st.tokens.size());
    PutU32(s, static_cast<uint32_t>(st.start_pos));
    PutU32(s, static_cast<uint32_t>(st.block_table.size()));
    s.append(reinterpret_cast<const char*>(st.block_table.data()), 4 * st.block_table.size());
    PutU32(s, static_cast<uint32_t>(st.local_block_begin));
    PutU32(s, static_cast<uint32_t>(st.local_block_table.size()));
    s.append(reinterpret_cast<const char*>(st.local_block_table.data()), 4 * st.local_block_table.size());
    PutU32(s, static_cast<uint32_t>(st.logits));
    // The adapter by id, name and folder: a follower reads its own slices there the first time.
    PutU32(s, st.adapter == nullptr ? 0 : st.adapter->id);
    if (st.adapter != nullptr) {
      PutStr(s, st.adapter->name);
      PutStr(s, st.adapter->dir);
    }
    PutU32(s, static_cast<uint32_t>(st.interventions.size()));
    for (const Intervention& iv : st.interventions) {
      PutU32(s, static_cast<uint32_t>(iv.kind));
      PutU32(s, static_cast<uint32_t>(iv.layer));
      PutU32(s, absl::bit_cast<uint32_t>(iv.factor));
      PutU32(s, static_cast<uint32_t>(iv.head));
      PutU32(s, static_cast<uint32_t>(iv.begin_pos));
      PutU32(s, static_cast<uint32_t>(iv.end_pos));
      PutU32(s, static_cast<uint32_t>(iv.vector.size()));
      s.append(reinterpret_cast<const char*>(iv.vector.data()), 4 * iv.vector.size());
    }
    // Activations are read on rank 0 only: followers are not told.
  }
  return s;
}

absl::StatusOr<DecodedStep> DecodeStep(absl::string_view bytes, AdapterStore* adapters) {
  auto bad = [] { return absl::InvalidArgumentError("malformed step message"); };
  if (bytes.empty() || bytes[0] != static_cast<char>(kStep)) return bad();
  Reader r(bytes.substr(1));
  uint32_t n;
  if (!r.U32(&n) || n > (1u << 20)) return bad();
  DecodedStep d;
  d.tokens.resize(n);
  d.blocks.resize(n);
  d.local_blocks.resize(n);
  d.steps.resize(n);
  d.adapters.resize(n);
  d.interventions.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t nt, start, nb, local_begin, nl, logits, adapter, ni;
    if (!r.U32(&nt) || !r.I32s(nt, &d.tokens[i]) || !r.U32(&start) || !r.U32(&nb) || !r.I32s(nb, &d.blocks[i]) ||
        !r.U32(&local_begin) || !r.U32(&nl) || !r.I32s(nl, &d.local_blocks[i]) || !r.U32(&logits) ||
        logits > static_cast<uint32_t>(LogitsWanted::kAll) || !r.U32(&adapter)) {
      return bad();
    }
    if (adapter != 0) {
      std::string name, dir;
      if (!r.Str(&name) || !r.Str(&dir)) return bad();
      if (adapters == nullptr) return absl::InvalidArgumentError("a step names an adapter; this rank has no store");
      d.names_adapter = true;
      if (d.adapter_error.ok()) {
        auto got = adapters->GetOrRegister(adapter, name, dir);
        if (got.ok()) {
          d.adapters[i] = *std::move(got);
        } else {
          d.adapter_error = absl::Status(got.status().code(), absl::StrCat("adapter '", name, "' (id ", adapter,
                                                                           ") from ", dir, ": ", got.status().message()));
        }
      }
    }
    if (!r.U32(&ni) || ni > 4096) return bad();
    d.interventions[i].resize(ni);
    for (Intervention& iv : d.interventions[i]) {
      uint32_t kind, layer, factor, head, begin, end, nv;
      if (!r.U32(&kind) || kind > static_cast<uint32_t>(InterventionKind::kAblateHead) || !r.U32(&layer) ||
          !r.U32(&factor) || !r.U32(&head) || !r.U32(&begin) || !r.U32(&end) || !r.U32(&nv) || !r.F32s(nv, &iv.vector)) {
        return bad();
      }
      iv.kind = static_cast<InterventionKind>(kind);
      iv.layer = static_cast<int32_t>(layer);
      iv.factor = absl::bit_cast<float>(factor);
      iv.head = static_cast<int32_t>(head);
      iv.begin_pos = static_cast<int32_t>(begin);
      iv.end_pos = static_cast<int32_t>(end);
    }
    SequenceStep& st = d.steps[i];
    st.tokens = d.tokens[i];
    st.start_pos = static_cast<int32_t>(start);
    st.block_table = d.blocks[i];
    st.local_block_table = d.local_blocks[i];
    st.local_block_begin = static_cast<int32_t>(local_begin);
    st.logits = static_cast<LogitsWanted>(logits);
    st.adapter = d.adapters[i].get();
    st.interventions = d.interventions[i];
  }
  if (!r.done()) return bad();
  return d;
}

LeaderBackend::LeaderBackend(std::unique_ptr<Backend> local, std::shared_ptr<HostCollective> collective)
    : local_(std::move(local)), collective_(std::move(collective)) {}

LeaderBackend::~LeaderBackend() {
  if (broken_ || collective_->world() == 1) return;
  std::string stop(1, static_cast<char>(kStop));
  collective_->Broadcast(&stop, 0).IgnoreError();  // followers may already be gone
}

absl::Status LeaderBackend::Announce(std::span<const SequenceStep> batch) {
  if (broken_) return absl::UnavailableError("the tensor-parallel group failed earlier; restart it");
  RETURN_IF_ERROR(ValidateStep(batch, config(), num_kv_blocks(), kv_block_size(), kv_window()));
  if (collective_->world() > 1) {
    std::string msg = EncodeStep(batch);
    if (auto s = collective_->Broadcast(&msg, 0); !s.ok()) {
      broken_ = true;
      return s;
    }
    const bool names_adapter =
        std::any_of(batch.begin(), batch.end(), [](const SequenceStep& st) { return st.adapter != nullptr; });
    if (names_adapter) {
      // The leader resolved its adapters before the step; the followers have just read theirs.
      absl::Status agreed = AgreeOnAdapters(*collective_, absl::OkStatus());
      if (!agreed.ok() && !absl::IsInvalidArgument(agreed)) broken_ = true;
      return agreed;
    }
  }
  return absl::OkStatus();
}

absl::Status AgreeOnAdapters(HostCollective& collective, const absl::Status& own) {
  const int world = collective.world();
  const float failed = own.ok() ? 0.0f : 1.0f;
  std::vector<float> all(static_cast<size_t>(world));
  RETURN_IF_ERROR(collective.AllGather(&failed, 1, all.data()));
  std::string why;
  for (int rank = 0; rank < world; ++rank) {
    if (all[rank] == 0.0f) continue;
    // Each failing rank tells its error, so the leader's answer names the rank and the file.
    std::string message = rank == collective.rank() ? std::string(own.message()) : std::string();
    RETURN_IF_ERROR(collective.Broadcast(&message, rank));
    absl::StrAppend(&why, why.empty() ? "" : "; ", "rank ", rank, ": ", message);
  }
  if (why.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("an adapter of this step cannot be read on every rank of the group, so the step did not run (",
                   why, "); fix the files on that rank (the adapter is read again at its next use)"));
}

absl::Status LeaderBackend::Forward(std::span<const SequenceStep> batch, StepLogits* out) {
  RETURN_IF_ERROR(Announce(batch));
  auto s = local_->Forward(batch, out);
  if (!s.ok() && !absl::IsInvalidArgument(s)) broken_ = true;
  return s;
}

// Followers run a plain Forward: the same collectives, whatever the leader then does with its logits.
absl::Status LeaderBackend::ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples,
                                             bool logits_to_host, StepLogits* out, std::vector<SampledToken>* tokens) {
  RETURN_IF_ERROR(Announce(batch));
  auto s = local_->ForwardAndSample(batch, samples, logits_to_host, out, tokens);
  if (!s.ok() && !absl::IsInvalidArgument(s)) broken_ = true;
  return s;
}

absl::Status LeaderBackend::Heartbeat() {
  if (broken_) return absl::UnavailableError("the tensor-parallel group failed earlier; restart it");
  if (collective_->world() == 1) return absl::OkStatus();
  std::string msg(1, static_cast<char>(kHeartbeat));
  auto s = collective_->Broadcast(&msg, 0);
  if (!s.ok()) broken_ = true;
  return s;
}

absl::Status RunFollower(Backend& local, HostCollective& collective,
                         const std::function<void(double seconds, const StepTimings& timings)>& on_step,
                         AdapterStore* adapters) {
  StepLogits logits;
  while (true) {
    std::string msg;
    // Idle time waiting for the next step is not the step's: the clock starts once the step's bytes arrived.
    if (auto s = collective.Broadcast(&msg, 0); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("lost the group leader: ", s.message()));
    }
    if (msg.empty()) return absl::InternalError("empty message from the leader");
    if (msg[0] == static_cast<char>(kStop)) return absl::OkStatus();
    if (msg[0] == static_cast<char>(kHeartbeat)) continue;
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(const auto step, DecodeStep(msg, adapters));
    if (step.names_adapter && collective.world() > 1) {
      // Run only if every rank holds the step's adapters; else the leader answers the error and the group goes on.
      absl::Status agreed = AgreeOnAdapters(collective, step.adapter_error);
      if (absl::IsInvalidArgument(agreed)) continue;
      if (!agreed.ok()) return absl::UnavailableError(absl::StrCat("lost the group leader: ", agreed.message()));
    }
    // A step every rank refuses alike before it computes (a row the backend cannot run: an adapter beyond the GPU's
    // slots) is answered by the leader, and the group goes on, as the leader does (LeaderBackend::Forward).
    if (auto s = local.Forward(step.steps, &logits); !s.ok()) {
      if (absl::IsInvalidArgument(s)) continue;
      return s;
    }
    if (on_step) {
      on_step(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), local.last_timings());
    }
  }
}

}  // namespace gemma
