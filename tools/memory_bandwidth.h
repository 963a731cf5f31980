// Measures the machine's memory read bandwidth with the current thread count.
#pragma once

#include <cstdint>

namespace gemma {

// Best of `repeats` full reads of a `bytes`-sized buffer, in bytes per second.
double MeasureReadBandwidth(int64_t bytes, int repeats);

}  // namespace gemma
