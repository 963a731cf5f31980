// Products at bf16 activations (--activations bf16): x rounded to bf16 and multiplied with bf16 weights, or with
// fp8 (E4M3) weights widened to bf16 in registers (exactly: bf16 holds every E4M3 value), by AVX512-BF16 dot
// products (vdpbf16ps: two bf16 products a lane, summed into f32), about twice the f32 kernel's multiply-adds an
// instruction. Opt-in: rounding x costs accuracy (docs/BENCHMARKS.md says how much).
#pragma once

#include <cstdint>
#include <span>

#include "shard/model/matrix_view.h"

namespace gemma {

// Whether this CPU has AVX512-BF16 and AVX512-VBMI (Zen 4 and later, Sapphire Rapids and later); decided at run
// time.
bool HasBf16DotProducts();
// Whether MatMulBf16Activations multiplies views of `format` on this CPU (bf16 and fp8, given the instructions).
bool Bf16ActivationsMultiply(WeightFormat format);

// Multiply-adds a second of vdpbf16ps over those of f32 FMAs (512-bit, one core, measured once per process in a few
// milliseconds); 0 without the instructions. AMD's Zen 4 and 5 run the dot products at twice the FMAs' rate
// (their published throughputs; prompts ran 2x faster with them here); an Intel Emerald Rapids core measured 0.5x.
double Bf16DotProductSpeedup();
// The two rates behind it, multiply-adds a second on this thread, measured anew (0 without the instructions). The
// chains must stay in registers for the ratio to mean anything; the unit test holds the f32 one to the FMA rate
// fma_throughput.h measures.
struct Bf16DotProductRates {
  double dot = 0, fma = 0;
};
Bf16DotProductRates MeasureBf16DotProductRates();
// Whether --activations bf16 is worth its rounding here: the dot products exist and run at least
// kBf16DotProductsWorthIt times the f32 rate. Where they do not, the backend runs the f32 kernel (ActivationsThatRun,
// cpu_backend.h): exact, and faster for prompts and batches (batch-1 decode is bound by memory either way).
inline constexpr double kBf16DotProductsWorthIt = 1.25;
bool Bf16DotProductsPayOff();

// As MatMul (matmul.h), with x rounded to bf16 (round to nearest even) first: out[m * ldo + n] =
// sum_k bf16(x[m, k]) * W[n, k] (for fp8 views, the codes' values summed, times the row's scale), every W a view
// Bf16ActivationsMultiply takes. Each output is summed in the same order whatever M is. False, computing nothing,
// otherwise: the caller runs MatMul.
bool MatMulBf16Activations(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights,
                           float* out, int64_t ldo);

}  // namespace gemma
