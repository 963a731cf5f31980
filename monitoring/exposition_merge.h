// Several processes' Prometheus text expositions as one, so one scrape port can carry a whole pod.
#pragma once

#include <string>
#include <vector>

namespace gemma {

// Merges text-format expositions (version 0.0.4) into one that Prometheus accepts: each metric family once, with
// one `# HELP` and one `# TYPE` line (the first text's that has them) and all its samples together, families in
// the order first seen. Samples belong to the family named by the `# HELP`/`# TYPE` lines above them (its name
// or its name plus a suffix, as `_bucket`, `_sum`, `_count`); a sample outside any family, an unparsable line, a
// family whose TYPE disagrees with an earlier text's, and a series an earlier text already gave (same name and
// labels, as every rank's `gemma_build_info`) are left out, so one bad input cannot spoil the scrape.
std::string MergeExpositions(const std::vector<std::string>& texts);

}  // namespace gemma
