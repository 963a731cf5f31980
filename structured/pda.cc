#include "structured/pda.h"

#include <algorithm>
#include <cstring>

namespace gemma::structured {
namespace {

// Phases of each frame kind.
enum ObjectPhase : uint8_t { kObjOpen, kObjKey, kObjColon, kObjValue, kObjAfter, kObjComma, kObjAnyKey };
enum ArrayPhase : uint8_t { kArrOpen, kArrItem, kArrAfter, kArrComma };
enum StringPhase : uint8_t { kStrChars, kStrEscape, kStrHex, kStrUtf8 };
enum NumberPhase : uint8_t { kNumSign, kNumZero, kNumInt, kNumDot, kNumFrac, kNumExp, kNumExpSign, kNumExpDigits };

constexpr uint32_t kMaxIntDigits = 19, kMaxFracDigits = 17, kMaxExpDigits = 3;
// With at most 19 integer digits, |value| < 1e19 * 10^289 = 1e308 stays a finite double (parsers reject overflow).
constexpr uint32_t kMaxExponent = 289;

bool IsDigit(uint8_t b) { return b >= '0' && b <= '9'; }
bool IsHex(uint8_t b) { return IsDigit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }
bool NumberComplete(uint8_t phase) {
  return phase == kNumZero || phase == kNumInt || phase == kNumFrac || phase == kNumExpDigits;
}

// A UTF-8 continuation range as Frame::index.
int32_t Range(uint8_t lo, uint8_t hi) { return lo | (hi << 8); }

}  // namespace

int32_t StackArena::Load(const Stack& stack) {
  int32_t top = kEmptyStack;
  for (const Frame& f : stack) top = Push(f, top);
  return top;
}

Stack StackArena::Materialize(int32_t top) const {
  Stack stack;
  for (int32_t s = top; s != kEmptyStack; s = nodes_[s].parent) stack.push_back(nodes_[s].frame);
  std::reverse(stack.begin(), stack.end());
  return stack;
}

Pda::Pda(const CompiledGrammar* grammar) : grammar_(grammar) {
  const auto& nodes = grammar_->nodes;
  leaves_.resize(nodes.size());
  all_keys_.resize(nodes.size());
  std::vector<char> expanded(nodes.size(), 0);
  std::vector<int32_t> touched;
  for (size_t n = 0; n < nodes.size(); ++n) {
    // anyOf graphs are acyclic (the compiler checks), so this terminates; each anyOf node is expanded once, since
    // refs can share one among exponentially many paths.
    for (int32_t t : touched) expanded[t] = 0;
    touched.clear();
    std::vector<int32_t> todo = {static_cast<int32_t>(n)};
    while (!todo.empty()) {
      const int32_t m = todo.back();
      todo.pop_back();
      if (nodes[m].kind == NodeKind::kAnyOf) {
        if (expanded[m]) continue;
        expanded[m] = 1;
        touched.push_back(m);
        todo.insert(todo.end(), nodes[m].branches.rbegin(), nodes[m].branches.rend());
      } else if (std::find(leaves_[n].begin(), leaves_[n].end(), m) == leaves_[n].end()) {
        leaves_[n].push_back(m);
      }
    }
    const size_t keys = nodes[n].keys.size();
    all_keys_[n] = keys >= 64 ? ~uint64_t{0} : (uint64_t{1} << keys) - 1;
  }
}

State Pda::Initial() const {
  Frame f;
  f.node = grammar_->root;
  return State{Stack{f}};
}

bool Pda::CanEnd(const StackArena& arena, int32_t stack) const {
  if (stack == kEmptyStack) return true;
  const StackArena::Node& n = arena[stack];
  return n.parent == kEmptyStack && n.frame.kind == FrameKind::kNumber && NumberComplete(n.frame.phase);
}

bool Pda::CanEnd(const State& state) const {
  for (const Stack& s : state) {
    if (s.empty()) return true;
    if (s.size() == 1 && s[0].kind == FrameKind::kNumber && NumberComplete(s[0].phase)) return true;
  }
  return false;
}

State Pda::Advance(const State& state, std::string_view bytes) const {
  StackArena arena;
  std::vector<int32_t> current, next;
  for (const Stack& s : state) current.push_back(arena.Load(s));
  for (char c : bytes) {
    next.clear();
    for (int32_t s : current) Step(arena, s, static_cast<uint8_t>(c), &next);
    current.swap(next);
    if (current.empty()) return {};
  }
  State out;
  for (int32_t s : current) out.push_back(arena.Materialize(s));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

State Pda::MaskEquivalent(const State& state, int max_token_bytes) const {
  State out = state;
  bool changed = false;
  const uint32_t t = static_cast<uint32_t>(max_token_bytes);
  for (Stack& s : out) {
    if (s.empty() || s.back().kind != FrameKind::kString || s.back().node < 0) continue;
    Frame& f = s.back();
    const GrammarNode& node = grammar_->nodes[f.node];
    if (node.max_length == kUnbounded || node.max_length - f.count < t) continue;  // a token may reach the maximum
    // A token adds at most `t` code points: with `t` left before the maximum it never reaches it, and a closing
    // quote within it is allowed by any count at or above the minimum, or by none more than `t` below it.
    uint32_t count = f.count;
    if (f.count >= node.min_length) {
      count = node.min_length;
    } else if (node.min_length - f.count > t) {
      count = 0;
    }
    changed = changed || count != f.count;
    f.count = count;
  }
  if (changed) {
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  return out;
}

std::string Pda::Key(const State& state) {
  std::string key;
  for (const Stack& s : state) {
    const uint32_t n = static_cast<uint32_t>(s.size());
    key.append(reinterpret_cast<const char*>(&n), sizeof(n));
    key.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(Frame));
  }
  return key;
}

// The value on top of `parent` is complete: the parent moves past it.
int32_t Pda::Finish(StackArena& arena, int32_t parent) const {
  if (parent == kEmptyStack) return kEmptyStack;
  Frame f = arena[parent].frame;
  if (f.kind == FrameKind::kObject) {
    f.phase = f.phase == kObjAnyKey ? kObjColon : kObjAfter;
  } else {  // an array: only objects and arrays hold children
    const GrammarNode& node = grammar_->nodes[f.node];
    f.phase = kArrAfter;
    f.count = node.max_items == kUnbounded ? std::min(f.count + 1, node.min_items) : f.count + 1;
  }
  return arena.Push(f, arena[parent].parent);
}

void Pda::Step(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const {
  if (stack == kEmptyStack) return;  // nothing follows a complete top-level value
  const Frame& f = arena[stack].frame;
  switch (f.kind) {
    case FrameKind::kValue: {
      const int32_t parent = arena[stack].parent;
      for (int32_t leaf : leaves_[f.node]) StartValue(arena, parent, leaf, byte, out);
      return;
    }
    case FrameKind::kObject: return StepObject(arena, stack, byte, out);
    case FrameKind::kArray: return StepArray(arena, stack, byte, out);
    case FrameKind::kString: return StepString(arena, stack, byte, out);
    case FrameKind::kNumber: return StepNumber(arena, stack, byte, out);
    case FrameKind::kLiteral: return Literal(arena, arena[stack].parent, f.node, f.index, f.pos, byte, out);
  }
}

void Pda::StartValue(StackArena& arena, int32_t parent, int32_t leaf, uint8_t byte, std::vector<int32_t>* out) const {
  const GrammarNode& node = grammar_->nodes[leaf];
  Frame f;
  f.node = leaf;
  switch (node.kind) {
    case NodeKind::kObject:
      if (byte != '{') return;
      f.kind = FrameKind::kObject;
      break;
    case NodeKind::kArray:
      if (byte != '[') return;
      f.kind = FrameKind::kArray;
      break;
    case NodeKind::kString:
      if (byte != '"') return;
      f.kind = FrameKind::kString;
      break;
    case NodeKind::kNumber:
      f.kind = FrameKind::kNumber;
      if (byte == '-') {
        f.phase = kNumSign;
      } else if (byte == '0') {
        f.phase = kNumZero;
        f.count = 1;
      } else if (IsDigit(byte)) {
        f.phase = kNumInt;
        f.count = 1;
      } else {
        return;
      }
      break;
    case NodeKind::kLiteral: return Literal(arena, parent, leaf, 0, 0, byte, out);
    case NodeKind::kAnyOf: return;  // never a leaf
  }
  out->push_back(arena.Push(f, parent));
}

// Literal `index` of `node` matched to `pos` stands for every literal sharing that prefix (the lowest such index
// is kept, so the frame is canonical). Literals are sorted, so those sharing a prefix are adjacent.
void Pda::Literal(StackArena& arena, int32_t parent, int32_t node, int32_t index, uint32_t pos, uint8_t byte,
                  std::vector<int32_t>* out) const {
  const std::vector<std::string>& lits = grammar_->nodes[node].literals;
  const std::string_view prefix = std::string_view(lits[index]).substr(0, pos);
  bool complete = false;
  int32_t longer = -1;
  for (size_t k = index; k < lits.size() && std::string_view(lits[k]).substr(0, pos) == prefix; ++k) {
    if (lits[k].size() <= pos || static_cast<uint8_t>(lits[k][pos]) != byte) continue;
    if (lits[k].size() == pos + 1) {
      complete = true;
    } else if (longer < 0) {
      longer = static_cast<int32_t>(k);
    }
  }
  if (complete) out->push_back(Finish(arena, parent));
  if (longer >= 0) {
    Frame f;
    f.kind = FrameKind::kLiteral;
    f.node = node;
    f.index = longer;
    f.pos = pos + 1;
    out->push_back(arena.Push(f, parent));
  }
}

void Pda::StepObject(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const {
  const int32_t parent = arena[stack].parent;
  Frame f = arena[stack].frame;
  const GrammarNode& node = grammar_->nodes[f.node];
  const bool has_unseen = node.any_keys || (f.seen & all_keys_[f.node]) != all_keys_[f.node];
  auto start_key = [&] {
    if (node.any_keys) {
      f.phase = kObjAnyKey;
      Frame key;
      key.kind = FrameKind::kString;
      key.node = -1;
      out->push_back(arena.Push(key, arena.Push(f, parent)));
      return;
    }
    // The lowest unseen key stands for all of them (an empty prefix).
    for (size_t k = 0; k < node.keys.size(); ++k) {
      if (f.seen >> k & 1) continue;
      f.phase = kObjKey;
      f.index = static_cast<int32_t>(k);
      f.pos = 0;
      out->push_back(arena.Push(f, parent));
      return;
    }
  };
  switch (f.phase) {
    case kObjOpen:
      if (byte == '}' && (node.any_keys || node.required == 0)) {
        out->push_back(Finish(arena, parent));
      } else if (byte == '"' && (node.any_keys || !node.keys.empty())) {
        start_key();
      }
      return;
    case kObjComma:
      if (byte == '"') start_key();
      return;
    case kObjKey: {
      // As for literals: the lowest unseen key with the matched prefix stands for all of them.
      const std::string_view prefix = std::string_view(node.keys[f.index]).substr(0, f.pos);
      for (size_t k = f.index; k < node.keys.size(); ++k) {
        const std::string& key = node.keys[k];
        if ((f.seen >> k & 1) || std::string_view(key).substr(0, f.pos) != prefix) continue;
        // A '"' closes the key unless it follows a backslash; escaped keys never allow both for one prefix.
        const bool close = byte == '"' && key.size() == f.pos;
        if (close || (key.size() > f.pos && static_cast<uint8_t>(key[f.pos]) == byte)) {
          f.index = static_cast<int32_t>(k);
          if (close) {
            f.phase = kObjColon;
          } else {
            ++f.pos;
          }
          out->push_back(arena.Push(f, parent));
          return;
        }
      }
      return;
    }
    case kObjColon: {
      if (byte != ':') return;
      Frame value;
      if (node.any_keys) {
        value.node = node.values[0];
      } else {
        f.seen |= uint64_t{1} << f.index;
        value.node = node.values[f.index];
      }
      f.phase = kObjValue;
      f.index = 0;
      f.pos = 0;
      out->push_back(arena.Push(value, arena.Push(f, parent)));
      return;
    }
    case kObjAfter:
      if (byte == ',' && has_unseen) {
        f.phase = kObjComma;
        out->push_back(arena.Push(f, parent));
      } else if (byte == '}' && (node.any_keys || (node.required & ~f.seen) == 0)) {
        out->push_back(Finish(arena, parent));
      }
      return;
    default:
      return;  // kObjValue, kObjAnyKey: a child is on top
  }
}

void Pda::StepArray(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const {
  const int32_t parent = arena[stack].parent;
  Frame f = arena[stack].frame;
  const GrammarNode& node = grammar_->nodes[f.node];
  auto start_item = [&] {
    f.phase = kArrItem;
    Frame item;
    item.node = node.items;
    Step(arena, arena.Push(item, arena.Push(f, parent)), byte, out);
  };
  switch (f.phase) {
    case kArrOpen:
      if (byte == ']' && node.min_items == 0) {
        out->push_back(Finish(arena, parent));
      } else if (node.max_items > 0) {
        start_item();
      }
      return;
    case kArrComma:
      start_item();
      return;
    case kArrAfter:
      if (byte == ',' && f.count < node.max_items) {
        f.phase = kArrComma;
        out->push_back(arena.Push(f, parent));
      } else if (byte == ']' && f.count >= node.min_items) {
        out->push_back(Finish(arena, parent));
      }
      return;
    default:
      return;  // kArrItem: the item is on top
  }
}

void Pda::StepString(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const {
  const int32_t parent = arena[stack].parent;
  Frame f = arena[stack].frame;
  uint32_t min = 0, max = kUnbounded;
  if (f.node >= 0) {
    min = grammar_->nodes[f.node].min_length;
    max = grammar_->nodes[f.node].max_length;
  }
  // A new code point; an unbounded string only needs to know whether it has reached its minimum.
  auto next_char = [&] {
    if (f.count >= max) return false;
    f.count = max == kUnbounded ? std::min(f.count + 1, min) : f.count + 1;
    return true;
  };
  auto utf8 = [&](uint16_t continuation, uint8_t lo, uint8_t hi) {
    if (!next_char()) return;
    f.phase = kStrUtf8;
    f.aux = continuation;
    f.index = Range(lo, hi);
    out->push_back(arena.Push(f, parent));
  };
  switch (f.phase) {
    case kStrChars:
      if (byte == '"') {
        if (f.count >= min) out->push_back(Finish(arena, parent));
      } else if (byte == '\\') {
        if (next_char()) {
          f.phase = kStrEscape;
          out->push_back(arena.Push(f, parent));
        }
      } else if (byte < 0x20) {
        return;
      } else if (byte < 0x80) {
        if (next_char()) out->push_back(arena.Push(f, parent));
      } else if (byte >= 0xC2 && byte <= 0xDF) {
        utf8(1, 0x80, 0xBF);
      } else if (byte == 0xE0) {
        utf8(2, 0xA0, 0xBF);  // no overlongs
      } else if (byte == 0xED) {
        utf8(2, 0x80, 0x9F);  // no surrogates
      } else if (byte >= 0xE1 && byte <= 0xEF) {
        utf8(2, 0x80, 0xBF);
      } else if (byte == 0xF0) {
        utf8(3, 0x90, 0xBF);  // no overlongs
      } else if (byte >= 0xF1 && byte <= 0xF3) {
        utf8(3, 0x80, 0xBF);
      } else if (byte == 0xF4) {
        utf8(3, 0x80, 0x8F);  // nothing above U+10FFFF
      }
      return;
    case kStrUtf8:
      if (byte < (f.index & 0xff) || byte > (f.index >> 8)) return;
      if (--f.aux == 0) {
        f.phase = kStrChars;
        f.index = 0;
      } else {
        f.index = Range(0x80, 0xBF);
      }
      out->push_back(arena.Push(f, parent));
      return;
    case kStrEscape:
      if (byte == 'u') {
        f.phase = kStrHex;
      } else if (std::strchr("\"\\/bfnrt", byte) == nullptr || byte == 0) {
        return;
      } else {
        f.phase = kStrChars;
      }
      out->push_back(arena.Push(f, parent));
      return;
    case kStrHex:
      if (!IsHex(byte)) return;
      if (f.aux == 0 && (byte == 'd' || byte == 'D')) f.index = 1;
      if (f.aux == 1 && f.index == 1 && !(byte >= '0' && byte <= '7')) return;  // U+D800..U+DFFF
      if (++f.aux == 4) {
        f.phase = kStrChars;
        f.aux = 0;
        f.index = 0;
      }
      out->push_back(arena.Push(f, parent));
      return;
  }
}

void Pda::StepNumber(StackArena& arena, int32_t stack, uint8_t byte, std::vector<int32_t>* out) const {
  const int32_t parent = arena[stack].parent;
  Frame f = arena[stack].frame;
  const bool integer = grammar_->nodes[f.node].integer;
  auto to = [&](uint8_t phase, uint32_t count) {
    f.phase = phase;
    f.count = count;
    if (phase != kNumExpDigits) f.pos = 0;  // pos: the exponent's value
    out->push_back(arena.Push(f, parent));
  };
  auto exponent_digit = [&](uint32_t count) {
    const uint32_t value = (count == 1 ? 0 : f.pos) * 10 + (byte - '0');
    if (value > kMaxExponent) return;
    f.pos = value;
    to(kNumExpDigits, count);
  };
  const bool digit = IsDigit(byte);
  const bool exp = !integer && (byte == 'e' || byte == 'E');
  switch (f.phase) {
    case kNumSign:
      if (byte == '0') return to(kNumZero, 1);
      if (digit) return to(kNumInt, 1);
      return;
    case kNumZero:
    case kNumInt:
      if (digit && f.phase == kNumInt && f.count < kMaxIntDigits) return to(kNumInt, f.count + 1);
      if (byte == '.' && !integer) return to(kNumDot, 0);
      if (exp) return to(kNumExp, 0);
      break;
    case kNumDot:
      if (digit) return to(kNumFrac, 1);
      return;
    case kNumFrac:
      if (digit && f.count < kMaxFracDigits) return to(kNumFrac, f.count + 1);
      if (exp) return to(kNumExp, 0);
      break;
    case kNumExp:
      if (byte == '+' || byte == '-') return to(kNumExpSign, 0);
      if (digit) return exponent_digit(1);
      return;
    case kNumExpSign:
      if (digit) return exponent_digit(1);
      return;
    case kNumExpDigits:
      if (digit && f.count < kMaxExpDigits) {
        const size_t before = out->size();
        exponent_digit(f.count + 1);
        if (out->size() > before) return;
      }
      break;
  }
  // A complete number ends at the first byte that cannot extend it; that byte belongs to the parent.
  if (NumberComplete(f.phase)) Step(arena, Finish(arena, parent), byte, out);
}

}  // namespace gemma::structured
