// Weight-only quantized GEMM for the CPU: y[m, n] = sum_k x[m, k] * W[n, k], W read in kernels/quant_gemm.py's
// canonical layout (the only copy of the weight):
//
//   W[n, k] = scale[n, g] * code[n, k] + offset[n, g],   g = k / group_size
//
// codes uint8 [N, K] (8-bit) or two to a byte [N, K / 2] (4-bit: column 2j in the low nibble of byte j).
// Per group the dot is split as
//
//   sum_k x[k] W[n, k] = scale * sum_k (code[k] - c) x[k]  +  (offset + c * scale) * sum_k x[k]
//
// with the codes centred (c = 8 for 4 bits, 128 for 8 bits) so that symmetric formats (Q4_0, Q8_0) have no
// offset term at all and the first sum cancels little. The 4-bit path for bf16 activations with K a multiple
// of 64 (tile_bf16_wide) uses c = -128 instead: it unpacks without shuffles (see there). Centred codes are small integers, exact in bfloat16,
// so with bf16 activations each code is dotted with x by AVX512-BF16's vdpbf16ps (products exact, float32
// sums); the group scale multiplies the group's partial sum once.
//
// Weight-stationary: each 32-column chunk of a weight row is unpacked once and dotted with up to M_BLOCK
// activation rows; a tile of N_TILE weight rows stays in cache while every row block passes over it.
//
// Batch invariance: y[m, n] is summed in an order fixed by (K, group_size) alone: the same for any M, any
// row block and any split of N over threads, so a row's result never depends on the other rows of the call.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstring>

#include <vector>

#include "ops.h"
#include "vec.h"

// vec.h defines KS_AVX512 (and includes immintrin.h) where AVX512-BF16 code is built

namespace {

constexpr int CHUNK = 32;   // weight columns unpacked per step (GGUF's 32-wide blocks)
constexpr int M_BLOCK = 4;  // activation rows sharing one unpacked chunk (accumulators stay in registers)
constexpr int64_t N_TILE = 64;
constexpr int64_t N_UNIT = 4;  // weight rows: the grain of the split over threads

// Scales and offsets are float32, or float16 where the loader found every value exact in it (GGUF's Q4_0,
// Q4_1 and Q8_0 store them so): half the bytes of a call that is a read of its weight.
struct Problem {
  const uint8_t* q;
  const void* scales;
  const void* offsets;
  bool half;  // scales/offsets are float16
  int64_t ldq, lds;  // row strides of codes (bytes) and of scales/offsets (elements)
  int64_t K;
  int group, bits;
  bool wide;  // 4-bit, K a multiple of 64, groups of 32 or of a multiple of 64: tile_bf16_wide
  int group_shift;  // log2(group) when a power of two (every GGUF and RTN group), else -1
  int64_t groups() const { return K / group; }
  // the group of column k: a shift, not a division, in the inner loops
  int64_t group_of(int64_t k) const { return group_shift >= 0 ? k >> group_shift : k / group; }
  float centre() const { return bits == 4 ? 8.0f : 128.0f; }
  float at(const void* base, int64_t i) const {
    return half ? c10::detail::fp16_ieee_to_fp32_value(static_cast<const uint16_t*>(base)[i])
                : static_cast<const float*>(base)[i];
  }
  float scale(int64_t n, int64_t g) const { return at(scales, n * lds + g); }
  float offset(int64_t n, int64_t g) const { return at(offsets, n * lds + g); }
};

// outputs are written in x's dtype, or float32 (logits: no bf16 rounding of a near tie)
template <typename O>
inline O out_cast(float v) { return static_cast<O>(v); }  // bf16: round to nearest even

// sum of each group of x (as float), [rows, groups]: the offset term's factor, shared by every weight row.
// 16 lanes at a time where the group allows (it runs on one thread while the others wait).
template <typename T>
std::vector<float> group_sums(const T* x, int64_t ldx, int64_t rows, const Problem& p) {
  std::vector<float> sums(rows * p.groups());
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t g = 0; g < p.groups(); ++g) {
      const T* xg = x + m * ldx + g * p.group;
      float s = 0.f;
      if (p.group % ks::LANES == 0) {
        ks::vec acc = ks::zero();
        for (int64_t k = 0; k < p.group; k += ks::LANES) acc = ks::add(acc, ks::load(xg + k));
        s = ks::sum(acc);
      } else {
        for (int64_t k = 0; k < p.group; ++k) s += static_cast<float>(xg[k]);
      }
      sums[m * p.groups() + g] = s;
    }
  return sums;
}

inline float code_at(const Problem& p, int64_t n, int64_t k) {
  const uint8_t* row = p.q + n * p.ldq;
  if (p.bits == 8) return static_cast<float>(row[k]);
  uint8_t byte = row[k / 2];
  return static_cast<float>((k & 1) ? (byte >> 4) : (byte & 0xF));
}

// Portable path (any x86/ARM build): the same split, one row at a time.
template <typename T, typename O>
void rows_generic(const T* x, int64_t ldx, int64_t rows, const float* xsum, const Problem& p, int64_t n0,
                  int64_t n1, O* y, int64_t ldy) {
  const float c = p.centre();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < rows; ++m) {
      float acc = 0.f, off = 0.f;
      for (int64_t g = 0; g < p.groups(); ++g) {
        float part = 0.f;
        for (int64_t k = g * p.group; k < (g + 1) * p.group; ++k)
          part += (code_at(p, n, k) - c) * static_cast<float>(x[m * ldx + k]);
        float scale = p.scale(n, g);
        acc += scale * part;
        off += (p.offset(n, g) + c * scale) * xsum[m * p.groups() + g];
      }
      y[m * ldy + n] = out_cast<O>(acc + off);
    }
}

#ifdef KS_AVX512

// bf16 bit patterns of code - 8 for the 16 nibble values (vpermw's table; entries 16..31 unused)
inline __m512i nibble_table() {
  alignas(64) uint16_t t[32] = {};
  for (int i = 0; i < 16; ++i) {
    float f = static_cast<float>(i - 8);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    t[i] = static_cast<uint16_t>(bits >> 16);  // exact: small integers
  }
  return _mm512_load_si512(t);
}

// 16 packed bytes (32 nibbles, columns 0..31) -> 32 bf16 (code - 8) in column order:
// dword j = byte j; (b | b << 12) & 0x000F000F puts the low nibble in word 2j and the high one in word 2j + 1
inline __m512i unpack4_bf16(const uint8_t* src, __m512i table) {
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  __m512i idx = _mm512_ternarylogic_epi32(b, _mm512_slli_epi32(b, 12), _mm512_set1_epi32(0x000F000F), 0xA8);
  return _mm512_permutexvar_epi16(idx, table);
}

// 32 bytes (columns 0..31) -> two bf16 operands whose dots with x sum to sum (code - 128) x, without float
// conversions (vcvtdq2ps and vcvtne2ps2bf16 issue slowly here): with code = 128 b + r (r < 128, b its top bit),
// lo = 0x4300 | r is the bf16 number 128 + r and hi = 0xC380 ^ (b << 7) is -256 (b = 0) or -128 (b = 1), so
// lo + hi = r + 128 b - 128 = code - 128 exactly, each operand exact in bf16.
struct Unpacked8 {
  __m512i lo, hi;
};
inline Unpacked8 unpack8_bf16(const uint8_t* src) {
  const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return {_mm512_ternarylogic_epi32(w, _mm512_set1_epi16(0x7F), _mm512_set1_epi16(0x4300), 0xEA),   // (A & B) | C
          _mm512_ternarylogic_epi32(w, _mm512_set1_epi16(0x80), _mm512_set1_epi16(static_cast<short>(0xC380)),
                                    0x6A)};  // (A & B) ^ C
}

// A weight row's bytes are requested PREFETCH_BYTES ahead of their use: a call streams its weight from DRAM
// once, and without the request the loads of the next rows wait behind the arithmetic of these (measured on the
// Q8_0 LM head, 49152 x 576, from DRAM: 1.3-1.5x faster at 8-16 KiB ahead, the same from 4 to 36 KiB). Rows are
// contiguous and each thread walks its rows in order, so bytes ahead are the rows it reads next; a request past
// the end of the weight is a hint the CPU drops, never a fault.
constexpr int64_t PREFETCH_BYTES = 8192;
inline void prefetch_ahead(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + PREFETCH_BYTES), _MM_HINT_T0);
}

// scale[n, g] as float32 (F16C's conversion where float16)
inline float scale_at(const Problem& p, int64_t n, int64_t g) {
  const int64_t i = n * p.lds + g;
  return p.half ? _cvtsh_ss(static_cast<const uint16_t*>(p.scales)[i]) : static_cast<const float*>(p.scales)[i];
}

// up to 16 scales or offsets starting at element i, as float32 (lanes outside the mask 0)
inline __m512 load_params(const Problem& p, const void* base, int64_t i, __mmask16 mask) {
  if (p.half) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
  return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
}

template <int MB, int NB>
inline void zero_tile(__m512 (&acc)[MB][NB]) {
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_ps();
}

// acc[m][j] += (offset + c * scale)[n + j, g] * xsum[m, g], lane g % 16 (16 groups a step, masked tail): each
// weight row's factor is built once for all MB rows
template <int MB, int NB>
__attribute__((always_inline)) inline void add_offset_terms(__m512 (&acc)[MB][NB], const Problem& p, int64_t n,
                                                            const float* xsum, float c) {
  const int64_t groups = p.groups();
  const __m512 vc = _mm512_set1_ps(c);
  for (int64_t g = 0; g < groups; g += 16) {
    const __mmask16 mask = groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (groups - g)) - 1);
    __m512 xs[MB];
    for (int m = 0; m < MB; ++m) xs[m] = _mm512_maskz_loadu_ps(mask, xsum + m * groups + g);
    for (int j = 0; j < NB; ++j) {
      const int64_t row = (n + j) * p.lds + g;
      const __m512 factor = _mm512_fmadd_ps(vc, load_params(p, p.scales, row, mask), load_params(p, p.offsets, row, mask));
      for (int m = 0; m < MB; ++m) acc[m][j] = _mm512_fmadd_ps(factor, xs[m], acc[m][j]);
    }
  }
}

// each accumulator plus its offset term, summed over its lanes four accumulators at a time (ks::sum4), written out
// (inlined into the tile, as add_offset_terms: passed by reference to a call, the accumulators went through memory;
// ~10% of a call at M = 8)
template <int MB, int NB, typename O>
__attribute__((always_inline)) inline void store_tile(__m512 (&acc)[MB][NB], const Problem& p, int64_t n,
                                                      const float* xsum, float centre, O* y, int64_t ldy) {
  add_offset_terms<MB, NB>(acc, p, n, xsum, centre);
  constexpr int T = MB * NB;
  const __m512 zero = _mm512_setzero_ps();
  auto slot = [&](int t) { return t < T ? acc[t / NB][t % NB] : zero; };  // row-major order; zeros past the end
  for (int t = 0; t < T; t += 4) {
    float sums[4];
    ks::sum4(slot(t), slot(t + 1), slot(t + 2), slot(t + 3), sums);
    for (int i = 0; i < 4 && t + i < T; ++i) y[(t + i) / NB * ldy + n + (t + i) % NB] = out_cast<O>(sums[i]);
  }
}

// One tile: MB activation rows against NB weight rows starting at n. Each 32-column chunk of a weight row is
// unpacked once for all MB rows; MB * NB independent accumulators keep the FMA units busy (one chain would
// wait on its own latency every chunk). Every accumulator sees the chunks in the same order whatever MB and
// NB are, so tails (fewer rows) round exactly as full tiles do.
template <int MB, int NB, int BITS, typename O>
void tile_bf16(const c10::BFloat16* x, int64_t ldx, const float* xsum, const Problem& p, int64_t n,
               O* y, int64_t ldy, __m512i table) {
  __m512 acc[MB][NB];
  zero_tile<MB, NB>(acc);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < p.K; k += CHUNK) {
    const int64_t g = p.group_of(k);
    __m512i w[NB], w2[NB];  // 8-bit codes: two operands (unpack8_bf16); 4-bit: w alone
    __m512 scale[NB];
    for (int j = 0; j < NB; ++j) {
      const uint8_t* row = p.q + (n + j) * p.ldq;
      prefetch_ahead(row + k * BITS / 8);
      if constexpr (BITS == 4) {
        w[j] = unpack4_bf16(row + k / 2, table);
      } else {
        const Unpacked8 u = unpack8_bf16(row + k);
        w[j] = u.lo;
        w2[j] = u.hi;
      }
      scale[j] = _mm512_set1_ps(scale_at(p, n + j, g));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + m * ldx + k));
      for (int j = 0; j < NB; ++j) {
        __m512 dot = _mm512_dpbf16_ps(zero, reinterpret_cast<__m512bh>(w[j]), xv);
        if constexpr (BITS == 8) dot = _mm512_dpbf16_ps(dot, reinterpret_cast<__m512bh>(w2[j]), xv);
        acc[m][j] = _mm512_fmadd_ps(dot, scale[j], acc[m][j]);
      }
    }
  }
  store_tile<MB, NB>(acc, p, n, xsum, p.centre(), y, ldy);
}

// 4-bit codes with bf16 activations, K a multiple of 64: no shuffles to unpack. The bf16 number with bits
// 0x4300 | q is exactly 128 + q for q < 128, so OR-ing a nibble into 0x4300 turns it into a bf16 operand; the
// dot then carries 128 * sum(x), which the offset term takes back (w = s q + o = s (128 + q) + (o - 128 s):
// "centre" -128 in the split at the top of this file).
//
// 128 columns a step: one 64-byte load gives 32 words, word i holding the nibbles of columns 4i..4i+3; four
// shift-and-mask steps give four operands whose lane i is column 4i + r (r = 0..3), dotted with four vectors
// of a copy of x laid out the same way. vdpbf16ps pairs lanes 2l and 2l + 1, so lane l of each dot sums
// columns 8l..8l+7 of the block: lanes 4g..4g+3 are the block's g-th 32 columns, and one scale vector (each
// lane its group's scale) multiplies the sum of the four dots. A 64-column tail (K = 576 = 4 * 128 + 64)
// widens its 32 bytes to words (low nibble: even column, high nibble: odd column) against an even/odd copy.
constexpr float OR_CENTRE = -128.0f;

inline __m512i nibble_bf16(__m512i words, int shift) {  // ((w >> shift) & 0xF) | 0x4300 in each 16-bit lane
  __m512i v = shift ? _mm512_srli_epi16(words, shift) : words;
  return _mm512_ternarylogic_epi32(v, _mm512_set1_epi16(0xF), _mm512_set1_epi16(0x4300), 0xEA);  // (A & B) | C
}

template <int MB, int NB, typename O>
void tile_bf16_wide(const c10::BFloat16* xd, int64_t ldx, const float* xsum, const Problem& p, int64_t n,
                    O* y, int64_t ldy, __m512i scale_index) {
  __m512 acc[MB][NB];
  zero_tile<MB, NB>(acc);
  const __m512 zero = _mm512_setzero_ps();
  // scales of the (up to 4) groups a 128-column block touches, spread to their lanes
  const int block_groups = p.group >= 128 ? 1 : 128 / p.group;
  const __mmask16 scale_mask = static_cast<__mmask16>((1u << block_groups) - 1);
  int64_t k = 0;
  for (; k + 4 * CHUNK <= p.K; k += 4 * CHUNK) {
    const int64_t g = p.group_of(k);
    __m512i w[NB];
    __m512 scale[NB];
    for (int j = 0; j < NB; ++j) {
      prefetch_ahead(p.q + (n + j) * p.ldq + k / 2);
      w[j] = _mm512_loadu_si512(p.q + (n + j) * p.ldq + k / 2);
      scale[j] = _mm512_permutexvar_ps(scale_index, load_params(p, p.scales, (n + j) * p.lds + g, scale_mask));
    }
    // each nibble operand is built once and dotted with every row (r outside m): MB * NB partial dots
    __m512 dot[MB][NB];
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < NB; ++j) dot[m][j] = zero;
    for (int r = 0; r < 4; ++r) {
      __m512bh nib[NB];
      for (int j = 0; j < NB; ++j) nib[j] = reinterpret_cast<__m512bh>(nibble_bf16(w[j], 4 * r));
      for (int m = 0; m < MB; ++m) {
        const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xd + m * ldx + k + r * CHUNK));
        for (int j = 0; j < NB; ++j) dot[m][j] = _mm512_dpbf16_ps(dot[m][j], nib[j], xv);
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_fmadd_ps(dot[m][j], scale[j], acc[m][j]);
  }
  if (k < p.K) {  // 64 columns left
    const int64_t g0 = p.group_of(k), g1 = p.group_of(k + CHUNK);
    __m512i lo[NB], hi[NB];
    __m512 scale[NB];
    for (int j = 0; j < NB; ++j) {
      __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.q + (n + j) * p.ldq + k / 2)));
      lo[j] = nibble_bf16(b, 0);
      hi[j] = nibble_bf16(b, 4);
      scale[j] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(scale_at(p, n + j, g0)), _mm512_set1_ps(scale_at(p, n + j, g1)));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xe = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xd + m * ldx + k));
      const __m512bh xo = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xd + m * ldx + k + CHUNK));
      for (int j = 0; j < NB; ++j) {
        __m512 dot = _mm512_dpbf16_ps(zero, reinterpret_cast<__m512bh>(lo[j]), xe);
        dot = _mm512_dpbf16_ps(dot, reinterpret_cast<__m512bh>(hi[j]), xo);
        acc[m][j] = _mm512_fmadd_ps(dot, scale[j], acc[m][j]);
      }
    }
  }
  store_tile<MB, NB>(acc, p, n, xsum, OR_CENTRE, y, ldy);
}

// lane l of a 128-column block's dot sums columns 8l..8l+7: its group within the block is 8l / group_size
// (built once a row range, not once a tile: 16 divisions a tile were 5-8% of a step)
inline __m512i block_scale_index(const Problem& p) {
  alignas(64) int32_t idx[16];
  for (int l = 0; l < 16; ++l) idx[l] = static_cast<int32_t>(p.group_of(8 * l));
  return _mm512_load_si512(idx);
}

// the per-call constant vectors a tile reads
struct Tables {
  __m512i nibbles;      // unpack4_bf16's
  __m512i scale_index;  // tile_bf16_wide's
};

// float32 activations: codes to float, two fused multiply-adds per chunk, row and weight row. 4-bit chunks come
// out as (even columns, odd columns), so x is read through a copy whose chunks are ordered the same way.
template <int MB, int NB, int BITS>
void tile_f32(const float* x, int64_t ldx, const float* xsum, const Problem& p, int64_t n, float* y, int64_t ldy) {
  __m512 acc[MB][NB];
  zero_tile<MB, NB>(acc);
  const __m512 centre = _mm512_set1_ps(p.centre());
  for (int64_t k = 0; k < p.K; k += CHUNK) {
    const int64_t g = p.group_of(k);
    __m512 w0[NB], w1[NB], scale[NB];
    for (int j = 0; j < NB; ++j) {
      const uint8_t* row = p.q + (n + j) * p.ldq;
      prefetch_ahead(row + k * BITS / 8);
      if (BITS == 4) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
        w0[j] = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0xF))), centre);
        w1[j] = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), centre);
      } else {
        w0[j] = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)))), centre);
        w1[j] = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16)))), centre);
      }
      scale[j] = _mm512_set1_ps(scale_at(p, n + j, g));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 x0 = _mm512_loadu_ps(x + m * ldx + k), x1 = _mm512_loadu_ps(x + m * ldx + k + 16);
      for (int j = 0; j < NB; ++j)
        acc[m][j] = _mm512_fmadd_ps(_mm512_fmadd_ps(w1[j], x1, _mm512_mul_ps(w0[j], x0)), scale[j], acc[m][j]);
    }
  }
  store_tile<MB, NB>(acc, p, n, xsum, p.centre(), y, ldy);
}

template <int MB, int NB, typename T, typename O>
void tile(const T* x, int64_t ldx, const float* xsum, const Problem& p, int64_t n, O* y, int64_t ldy,
          const Tables& tables) {
  if constexpr (std::is_same_v<T, float>) {  // float32 activations write float32
    if (p.bits == 4) tile_f32<MB, NB, 4>(x, ldx, xsum, p, n, y, ldy);
    else tile_f32<MB, NB, 8>(x, ldx, xsum, p, n, y, ldy);
  } else {
    if (p.bits == 4 && p.wide) tile_bf16_wide<MB, NB>(x, ldx, xsum, p, n, y, ldy, tables.scale_index);
    else if (p.bits == 4) tile_bf16<MB, NB, 4>(x, ldx, xsum, p, n, y, ldy, tables.nibbles);
    else tile_bf16<MB, NB, 8>(x, ldx, xsum, p, n, y, ldy, tables.nibbles);
  }
}

// MB rows of x against weight rows [n0, n1): NB weight rows a tile (fewer registers for float32), then the tail
template <int MB, typename T, typename O>
void rows_avx512(const T* x, int64_t ldx, const float* xsum, const Problem& p, int64_t n0, int64_t n1, O* y,
                 int64_t ldy) {
  // weight rows a tile: as many as the registers hold (tile_bf16_wide keeps 2 * MB * NB accumulators)
  constexpr int NB = std::is_same_v<T, float> || MB > 2 ? 2 : 4;
  const Tables tables{nibble_table(), block_scale_index(p)};
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) tile<MB, NB>(x, ldx, xsum, p, n, y, ldy, tables);
  for (; n < n1; ++n) tile<MB, 1>(x, ldx, xsum, p, n, y, ldy, tables);
}

// x's columns reordered as tile_f32's unpacked 4-bit chunks come out: each 32 columns as (even, odd) columns
template <typename T>
std::vector<T> deinterleave_pairs(const T* x, int64_t ldx, int64_t rows, int64_t K) {
  std::vector<T> out(rows * K);
  for (int64_t m = 0; m < rows; ++m) {
    const T* src = x + m * ldx;
    T* dst = out.data() + m * K;
    for (int64_t k0 = 0; k0 < K; k0 += CHUNK)
      for (int j = 0; j < CHUNK / 2; ++j) {
        dst[k0 + j] = src[k0 + 2 * j];
        dst[k0 + CHUNK / 2 + j] = src[k0 + 2 * j + 1];
      }
  }
  return out;
}

// x's columns reordered as tile_bf16_wide's unpacked codes come out: each 128-column block as columns 4i + r in
// vector r, then one 64-column block as (even, odd) columns. 32 columns an instruction: vpermt2w picks lanes of
// two 32-column vectors by index, so each vector r is two picks and a blend, the tail's halves one pick each.
inline std::vector<c10::BFloat16> deinterleave_wide(const c10::BFloat16* x, int64_t ldx, int64_t rows, int64_t K) {
  std::vector<c10::BFloat16> out(rows * K);
  alignas(64) int16_t quad[4][32], even[32], odd[32];
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r) quad[r][l] = static_cast<int16_t>(4 * (l % 16) + r);  // lane l: column 4(l % 16) + r
    even[l] = static_cast<int16_t>(2 * l);
    odd[l] = static_cast<int16_t>(2 * l + 1);
  }
  auto load = [](const c10::BFloat16* p) { return _mm512_loadu_si512(p); };
  for (int64_t m = 0; m < rows; ++m) {
    const c10::BFloat16* src = x + m * ldx;
    c10::BFloat16* dst = out.data() + m * K;
    int64_t k0 = 0;
    for (; k0 + 4 * CHUNK <= K; k0 += 4 * CHUNK) {
      const __m512i v0 = load(src + k0), v1 = load(src + k0 + 32), v2 = load(src + k0 + 64), v3 = load(src + k0 + 96);
      for (int r = 0; r < 4; ++r) {
        const __m512i idx = _mm512_load_si512(quad[r]);
        const __m512i lo = _mm512_permutex2var_epi16(v0, idx, v1), hi = _mm512_permutex2var_epi16(v2, idx, v3);
        _mm512_storeu_si512(dst + k0 + r * CHUNK, _mm512_mask_blend_epi16(0xFFFF0000u, lo, hi));
      }
    }
    if (k0 < K) {  // 64 columns
      const __m512i v0 = load(src + k0), v1 = load(src + k0 + 32);
      _mm512_storeu_si512(dst + k0, _mm512_permutex2var_epi16(v0, _mm512_load_si512(even), v1));
      _mm512_storeu_si512(dst + k0 + CHUNK, _mm512_permutex2var_epi16(v0, _mm512_load_si512(odd), v1));
    }
  }
  return out;
}

template <typename T, typename O>
void block_avx512(int rows, const T* x, int64_t ldx, const float* xsum, const Problem& p, int64_t n0, int64_t n1,
                  O* y, int64_t ldy) {
  switch (rows) {
    case 1: return rows_avx512<1>(x, ldx, xsum, p, n0, n1, y, ldy);
    case 2: return rows_avx512<2>(x, ldx, xsum, p, n0, n1, y, ldy);
    case 3: return rows_avx512<3>(x, ldx, xsum, p, n0, n1, y, ldy);
    default: return rows_avx512<4>(x, ldx, xsum, p, n0, n1, y, ldy);
  }
}

#endif  // KS_AVX512

bool vectorised(const Problem& p) {
#ifdef KS_AVX512
  return p.group % CHUNK == 0;
#else
  (void)p;
  return false;
#endif
}

template <typename T, typename O>
void run(const T* x, int64_t ldx, int64_t M, const Problem& p, O* y, int64_t N) {
  std::vector<float> xsum = group_sums(x, ldx, M, p);
  const bool vec = vectorised(p);
#ifdef KS_AVX512
  std::vector<T> xd;
  if (vec && p.bits == 4 && (std::is_same_v<T, float> || p.wide)) {
    if constexpr (std::is_same_v<T, float>) xd = deinterleave_pairs(x, ldx, M, p.K);
    else xd = deinterleave_wide(x, ldx, M, p.K);
    x = xd.data();
    ldx = p.K;
  }
#endif
  // Threads split N (never M): which rows share a call cannot change how any output is summed. Each thread takes
  // an equal, contiguous share of the weight rows (in units of N_UNIT; whole 64-row tiles left one thread 5 of
  // o_proj's 9 while the other waited) and walks it in tiles of N_TILE rows.
  at::parallel_for(0, (N + N_UNIT - 1) / N_UNIT, 1, [&](int64_t u0, int64_t u1) {
    const int64_t end = std::min(N, u1 * N_UNIT);
    for (int64_t n0 = u0 * N_UNIT; n0 < end; n0 += N_TILE) {
      const int64_t n1 = std::min(end, n0 + N_TILE);
      for (int64_t m0 = 0; m0 < M; m0 += M_BLOCK) {
        const int rows = static_cast<int>(std::min<int64_t>(M_BLOCK, M - m0));
        const float* xs = xsum.data() + m0 * p.groups();
        if (vec) {
#ifdef KS_AVX512
          block_avx512(rows, x + m0 * ldx, ldx, xs, p, n0, n1, y + m0 * N, N);
#endif
        } else {
          rows_generic(x + m0 * ldx, ldx, rows, xs, p, n0, n1, y + m0 * N, N);
        }
      }
    }
  });
}

at::Tensor quant_linear_op(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const at::Tensor& offsets, int64_t bits, int64_t group_size, bool float_out) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x: expected [M, K] with unit column stride");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x: float32 or bfloat16");
  TORCH_CHECK(bits == 4 || bits == 8, "bits: 4 or 8");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 2 && qweight.stride(1) == 1, "qweight");
  TORCH_CHECK((scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kHalf) &&
                  offsets.scalar_type() == scales.scalar_type(), "scales/offsets: float32 or float16, one dtype");
  TORCH_CHECK(scales.is_contiguous() && offsets.is_contiguous() && scales.sizes() == offsets.sizes(),
              "scales/offsets: contiguous, same shape");
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  TORCH_CHECK(group_size > 0 && K % group_size == 0, "K must be a multiple of group_size");
  TORCH_CHECK(qweight.size(1) * 8 / bits == K, "qweight: expected ", K * bits / 8, " bytes a row");
  TORCH_CHECK(scales.size(0) == N && scales.size(1) == K / group_size, "scales: expected [N, K / group_size]");
  Problem p{qweight.data_ptr<uint8_t>(), scales.data_ptr(), offsets.data_ptr(), scales.scalar_type() == at::kHalf,
            qweight.stride(0),
            scales.stride(0), K, static_cast<int>(group_size), static_cast<int>(bits),
            bits == 4 && K % 64 == 0 && (group_size == 32 || group_size % 64 == 0),
            (group_size & (group_size - 1)) == 0 ? __builtin_ctzll(group_size) : -1};
  at::Tensor y = at::empty({M, N}, x.options().dtype(float_out ? at::kFloat : x.scalar_type()));
  if (M == 0 || N == 0) return y;
  if (x.scalar_type() == at::kFloat)
    run(x.data_ptr<float>(), x.stride(0), M, p, y.data_ptr<float>(), N);
  else
    if (float_out)
      run(x.data_ptr<c10::BFloat16>(), x.stride(0), M, p, y.data_ptr<float>(), N);
    else
      run(x.data_ptr<c10::BFloat16>(), x.stride(0), M, p, y.data_ptr<c10::BFloat16>(), N);
  return y;
}

bool has_avx512() {
#ifdef KS_AVX512
  return true;
#else
  return false;
#endif
}

}  // namespace

at::Tensor ks::quant_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                            const at::Tensor& offsets, int64_t bits, int64_t group_size) {
  return quant_linear_op(x, qweight, scales, offsets, bits, group_size, false);
}

TORCH_LIBRARY_FRAGMENT(kernelserve, m) {
  m.def("quant_linear(Tensor x, Tensor qweight, Tensor scales, Tensor offsets, int bits, int group_size, "
        "bool float_out=False) -> Tensor");
  m.def("vectorised() -> bool", &has_avx512);
}

TORCH_LIBRARY_IMPL(kernelserve, CPU, m) { m.impl("quant_linear", &quant_linear_op); }
