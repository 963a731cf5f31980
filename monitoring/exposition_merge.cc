#include "monitoring/exposition_merge.h"

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace gemma {
namespace {

struct Family {
  std::string help, type;  // the whole comment lines
  std::string type_name;   // "counter", "histogram", ...
  std::vector<std::string> samples;
};

bool NameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

// The length of the metric name at the start of `line`; 0 if there is none.
size_t NameLength(absl::string_view line) {
  size_t n = 0;
  while (n < line.size() && NameChar(line[n], n == 0)) ++n;
  return n;
}

// The series a sample line names (its name and labels), or "" if the line is not a sample: the label set must
// close (quotes and escapes respected) and a value must follow.
absl::string_view SeriesKey(absl::string_view line) {
  size_t end = NameLength(line);
  if (end == 0) return {};
  if (end < line.size() && line[end] == '{') {
    bool quoted = false;
    for (++end; end < line.size(); ++end) {
      const char c = line[end];
      if (quoted && c == '\\') {
        ++end;
      } else if (c == '"') {
        quoted = !quoted;
      } else if (!quoted && c == '}') {
        break;
      }
    }
    if (end >= line.size()) return {};
    ++end;
  }
  if (end >= line.size() || line[end] != ' ' || absl::StripAsciiWhitespace(line.substr(end)).empty()) return {};
  return line.substr(0, end);
}

// "# HELP name ..." or "# TYPE name ...": the keyword's name, else "".
absl::string_view CommentName(absl::string_view line, absl::string_view keyword) {
  if (!absl::ConsumePrefix(&line, "# ") || !absl::ConsumePrefix(&line, keyword) || !absl::ConsumePrefix(&line, " ")) {
    return {};
  }
  const size_t n = NameLength(line);
  if (n == 0 || (n < line.size() && line[n] != ' ')) return {};
  return line.substr(0, n);
}

bool InFamily(absl::string_view sample_name, absl::string_view family) {
  return sample_name == family ||
         (absl::StartsWith(sample_name, family) && sample_name.size() > family.size() &&
          sample_name[family.size()] == '_');
}

}  // namespace

std::string MergeExpositions(const std::vector<std::string>& texts) {
  std::vector<std::string> order;
  std::map<std::string, Family, std::less<>> families;
  std::set<std::string, std::less<>> series;
  for (const std::string& text : texts) {
    std::string current;  // the family this text's samples now belong to; "" while none
    bool skip = false;    // this text's block of `current` disagrees with an earlier text's TYPE
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      absl::ConsumeSuffix(&line, "\r");
      if (line.empty()) continue;
      absl::string_view help = CommentName(line, "HELP"), type = CommentName(line, "TYPE");
      if (!help.empty() || !type.empty()) {
        const std::string name(help.empty() ? type : help);
        if (name != current) {
          current = name;
          skip = false;
          if (families.find(name) == families.end()) order.push_back(name);
        }
        Family& f = families[name];
        if (!help.empty() && f.help.empty()) f.help = std::string(line);
        if (!type.empty()) {
          absl::string_view kind = absl::StripAsciiWhitespace(line.substr(7 + type.size()));
          if (f.type.empty()) {
            f.type = std::string(line);
            f.type_name = std::string(kind);
          } else if (f.type_name != kind) {
            skip = true;
          }
        }
        continue;
      }
      if (line[0] == '#' || current.empty() || skip) continue;
      const absl::string_view key = SeriesKey(line);
      if (key.empty() || !InFamily(key.substr(0, NameLength(key)), current)) continue;
      if (!series.emplace(std::string(key)).second) continue;
      families[current].samples.emplace_back(std::string(line));
    }
  }
  std::string out;
  for (const std::string& name : order) {
    const Family& f = families[name];
    if (f.samples.empty()) continue;
    for (const std::string* l : {&f.help, &f.type}) {
      if (!l->empty()) out.append(*l).append("\n");
    }
    for (const std::string& s : f.samples) out.append(s).append("\n");
  }
  return out;
}

}  // namespace gemma
