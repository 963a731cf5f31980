// The f32 multiply-add rate this CPU reaches: the ceiling against which the bench reports prompt and batch-8
// throughput (compute-bound, as batch-1 decode is bound by memory bandwidth).
#pragma once

namespace gemma {

// Best of `repeats` timings of independent f32 multiply-add chains on every current OpenMP thread, on the
// instruction set MatMul runs on (MatMulTarget()): multiply-adds per second, all threads together.
double MeasureFmaThroughput(int repeats);

}  // namespace gemma
