// Measures the machine's memory read bandwidth with the current thread count.
#pragma once

#include <cstdint>

namespace gemma {

// Best of `repeats` full reads of a `bytes`-sized buffer, each read twice (as one plain stream per thread, and as
// four prefetched streams per thread, as the weight kernels read), in bytes per second.
double MeasureReadBandwidth(int64_t bytes, int repeats);

}  // namespace gemma
