#include "engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gemma {

Scheduler::Scheduler(SchedulerLimits limits, int num_blocks, int block_size, bool prefix_cache, KvWindow window)
    : limits_(limits), blocks_(num_blocks, block_size, prefix_cache, window) {
  if (limits_.max_prefill_chunk <= 0) limits_.max_prefill_chunk = limits_.max_tokens_per_step;
}

absl::Status Scheduler::Enqueue(std::unique_ptr<ScheduledSequence> s) {
  if (static_cast<int>(queue_.size()) >= limits_.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", limits_.max_queued,
                                                     " waiting requests); retry later"));
  }
  const int64_t positions = static_cast<int64_t>(s->prompt_len) + s->spec.max_new_tokens;
  const int64_t need = blocks_.MostBlocksHeld(positions, limits_.max_prefill_chunk);
  if (need > blocks_.num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", s->prompt_len, " tokens) + max_new_tokens (", s->spec.max_new_tokens, ") need ", need,
        " KV blocks of ", blocks_.block_size(), " positions",
        blocks_.window().enabled() ? " (the local layers' windows included)" : "", ", but at most ",
        blocks_.num_blocks(), " fit in the KV cache; shorten the prompt or max_new_tokens"));
  }
  queue_.push_back(std::move(s));
  return absl::OkStatus();
}

void Scheduler::Preempt(size_t index) {
  std::unique_ptr<ScheduledSequence> s = std::move(running_[index]);
  running_.erase(running_.begin() + index);
  blocks_.Free(s->blocks);  // its named blocks stay cached: readmitted, it may find them again
  s->computed = 0;          // recomputed from its tokens (prompt and generated so far) when readmitted
  s->chain = {};
  ++s->preemptions;
  s->preempted_at_step = steps_;
  ++preemptions_;
  queue_.push_front(std::move(s));
}

void Scheduler::AttachCachedPrefix(ScheduledSequence& s) {
  // Scoring needs every prompt position's logits, so it computes them all. At least one position is always
  // computed, so that the step has logits to sample from, and no shared block is ever written.
  if (!blocks_.prefix_cache() || s.spec.computes_every_position() || !s.blocks.empty()) return;
  const int64_t limit = static_cast<int64_t>(s.tokens.size()) - 1;
  const int64_t hit = blocks_.MatchPrefix(s.tokens, limit, s.spec.cache_salt, s.blocks, s.chain);
  s.computed = static_cast<int32_t>(hit);
}

bool Scheduler::WaitsForInFlightPrefix(const ScheduledSequence& s) const {
  if (!blocks_.prefix_cache() || s.spec.computes_every_position()) return false;
  const int64_t block = blocks_.block_size();
  for (const auto& r : running_) {
    if (r->computed >= r->prompt_len || r->spec.cache_salt != s.spec.cache_salt ||
        r->spec.computes_every_position()) {
      continue;
    }
    // s waits when both prompts start with one more whole block than either has computed, short of s's last token
    // (which s always computes itself).
    const int64_t n = std::min<int64_t>(r->prompt_len, static_cast<int64_t>(s.prompt_len) - 1);
    const int64_t need = (std::max<int64_t>(s.computed, r->computed) / block + 1) * block;
    if (need <= n && std::equal(s.tokens.begin(), s.tokens.begin() + need, r->tokens.begin())) return true;
  }
  return false;
}

std::vector<uint32_t> Scheduler::RunningAdaptersThisStep() {
  std::vector<uint32_t> adapters;
  for (const auto& r : running_) {
    const uint32_t a = r->spec.adapter;
    if (a != 0 && !r->held && std::find(adapters.begin(), adapters.end(), a) == adapters.end()) adapters.push_back(a);
  }
  const int cap = limits_.max_adapters_per_step;
  if (cap <= 0 || static_cast<int>(adapters.size()) <= cap) return adapters;
  std::vector<uint32_t> turn;
  for (int k = 0; k < cap; ++k) turn.push_back(adapters[(adapter_turn_ + k) % adapters.size()]);
  adapter_turn_ = (adapter_turn_ + cap) % static_cast<int64_t>(adapters.size());
  return turn;
}

std::vector<PlannedSequence> Scheduler::Schedule() {
  ++steps_;
  std::vector<PlannedSequence> plan;
  // The step's adapters: those of running sequences first; a row of any other waits.
  const int adapter_cap = limits_.max_adapters_per_step;
  std::vector<uint32_t> adapters = adapter_cap > 0 ? RunningAdaptersThisStep() : std::vector<uint32_t>{};
  auto adapter_fits = [&](uint32_t a) {
    return adapter_cap <= 0 || a == 0 || std::find(adapters.begin(), adapters.end(), a) != adapters.end();
  };
  int budget = limits_.max_tokens_per_step;
  // Any run of more than one position (a prompt, or what a preempted or forked sequence computes again) is cut at
  // the prefill chunk: the admission bound (MostBlocksHeld) counts on runs no longer than that.
  auto chunk = [&](const ScheduledSequence& s) {
    const int pending = static_cast<int>(s.tokens.size()) - s.computed;
    return std::min({pending, budget, limits_.max_prefill_chunk});
  };
  // Running sequences, oldest first: decodes before prompt chunks, so a long prompt never stalls the tokens of
  // others. A newer sequence is preempted when an older one needs a block.
  std::vector<bool> planned(running_.size(), false);
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      ScheduledSequence* s = running_[i].get();
      const bool decoding = s->computed >= s->prompt_len;
      const int count = chunk(*s);
      if (planned[i] || s->held || count <= 0 || decoding != (pass == 0) || !adapter_fits(s->spec.adapter)) {
        ++i;
        continue;
      }
      if (!blocks_.EnsureCapacity(s->blocks, s->computed + count)) {
        // The newest unplanned sequence gives way; if that is this one, it waits.
        size_t victim = running_.size() - 1;
        while (victim > i && planned[victim]) --victim;
        Preempt(victim);
        planned.erase(planned.begin() + victim);
        continue;
      }
      plan.push_back({s, s->computed, count, s->computed + count == static_cast<int>(s->tokens.size())});
      planned[i] = true;
      budget -= count;
      ++i;
    }
  }
  // Then the queue, first come first served, while budget, batch size and blocks allow. A sequence preempted by
  // this step waits for the next one: taking it back now would only preempt again. One waiting for blocks another
  // is prefilling is passed over until they are named. Past the adapter limit, a sequence of another adapter waits,
  // and so do the adapter sequences behind it, until the running adapters make room.
  bool adapter_waits = false;
  for (size_t q = 0; q < queue_.size() && budget > 0 && static_cast<int>(running_.size()) < limits_.max_batch_size;) {
    ScheduledSequence* s = queue_[q].get();
    if (s->held) {  // a preempted beam waiting for its siblings
      ++q;
      continue;
    }
    if (s->preempted_at_step == steps_) break;
    if (WaitsForInFlightPrefix(*s)) {  // before its prefix is looked up: a waiter costs no hashing
      ++q;
      continue;
    }
    if (const uint32_t a = s->spec.adapter; a != 0 && adapter_cap > 0) {
      const bool placed = std::find(adapters.begin(), adapters.end(), a) != adapters.end();
      if (adapter_waits || (!placed && static_cast<int>(adapters.size()) >= adapter_cap)) {
        adapter_waits = true;
        ++q;
        continue;
      }
    }
    AttachCachedPrefix(*s);
    const int count = chunk(*s);
    if (!blocks_.EnsureCapacity(s->blocks, s->computed + count)) {  // FCFS: no overtaking for blocks
      blocks_.Free(s->blocks);
      s->computed = 0;
      s->chain = {};
      // Beams that have drawn wait for their siblings, perhaps for this one: rather than a step that runs nothing,
      // the newest gives its blocks up (it is computed again when it goes on).
      const auto held = std::find_if(running_.rbegin(), running_.rend(), [](const auto& r) { return r->held; });
      if (plan.empty() && held != running_.rend()) {
        Preempt(static_cast<size_t>(running_.rend() - held) - 1);
        ++q;  // it went in front of this one
        continue;
      }
      break;
    }
    if (blocks_.prefix_cache() && !s->spec.computes_every_position() && s->preemptions == 0) {  // once per request, when admitted
      prefix_query_tokens_ += s->prompt_len;
      prefix_hit_tokens_ += std::min(s->computed, s->prompt_len);
    }
    plan.push_back({s, s->computed, count, s->computed + count == static_cast<int>(s->tokens.size())});
    budget -= count;
    if (const uint32_t a = s->spec.adapter; a != 0 && !adapter_fits(a)) adapters.push_back(a);
    running_.push_back(std::move(queue_[q]));
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(q));
  }
  return plan;
}

void Scheduler::Advance(const PlannedSequence& p, int32_t token) {
  ScheduledSequence& s = *p.sequence;
  s.computed = p.start + p.count;
  blocks_.Register(s.tokens, s.computed, s.spec.cache_salt, s.blocks, s.chain);
  blocks_.Slide(s.blocks, s.computed);  // after naming them: a local block that left the window may still be matched
  if (p.sample && token >= 0) s.tokens.push_back(token);
}

void Scheduler::Fork(const ScheduledSequence& parent, std::unique_ptr<ScheduledSequence> c) {
  const bool running = std::any_of(running_.begin(), running_.end(), [&](const auto& r) { return r.get() == &parent; });
  if (running && static_cast<int>(running_.size()) < limits_.max_batch_size) {
    const int64_t bs = blocks_.block_size();
    const int64_t shared = std::min<int64_t>(parent.computed, static_cast<int64_t>(c->tokens.size()) - 1);
    int64_t full = std::min<int64_t>(shared / bs, static_cast<int64_t>(parent.blocks.global.size()));
    BlockTable table;
    const KvWindow& window = blocks_.window();
    if (window.enabled()) {
      // The child's next position is full * bs; its local layers need the block indices its window reaches.
      // A parent that already gave them back (its window slid past) cannot lend them: the child starts afresh.
      const int64_t start = std::max<int64_t>(0, full * bs - window.window + 1) / bs;
      const int64_t parent_end =
          parent.blocks.local_begin + static_cast<int64_t>(parent.blocks.local.size()) / window.local_groups;
      if (start < parent.blocks.local_begin || full > parent_end) full = 0;
      if (full > 0) {
        table.local_begin = static_cast<int32_t>(start);
        table.local.assign(parent.blocks.local.begin() + (start - parent.blocks.local_begin) * window.local_groups,
                           parent.blocks.local.begin() + (full - parent.blocks.local_begin) * window.local_groups);
      }
    }
    table.global.assign(parent.blocks.global.begin(), parent.blocks.global.begin() + full);
    c->blocks = blocks_.Fork(table);
    c->computed = static_cast<int32_t>(full * bs);
    c->chain = {};  // named again from the start: the shared blocks keep their names
    running_.push_back(std::move(c));
  } else {
    queue_.push_front(std::move(c));
  }
}

ScheduledSequence* Scheduler::Find(uint64_t id) {
  for (auto& s : running_) {
    if (s->id == id) return s.get();
  }
  for (auto& s : queue_) {
    if (s->id == id) return s.get();
  }
  return nullptr;
}

std::unique_ptr<ScheduledSequence> Scheduler::Remove(uint64_t id) {
  for (size_t i = 0; i < running_.size(); ++i) {
    if (running_[i]->id == id) {
      std::unique_ptr<ScheduledSequence> s = std::move(running_[i]);
      running_.erase(running_.begin() + i);
      blocks_.Free(s->blocks);
      return s;
    }
  }
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if ((*it)->id == id) {
      std::unique_ptr<ScheduledSequence> s = std::move(*it);
      queue_.erase(it);
      blocks_.Free(s->blocks);
      return s;
    }
  }
  return nullptr;
}

std::vector<std::unique_ptr<ScheduledSequence>> Scheduler::RemoveAll() {
  std::vector<std::unique_ptr<ScheduledSequence>> all;
  for (auto& s : running_) all.push_back(std::move(s));
  for (auto& s : queue_) all.push_back(std::move(s));
  running_.clear();
  queue_.clear();
  for (auto& s : all) blocks_.Free(s->blocks);
  return all;
}

}  // namespace gemma
