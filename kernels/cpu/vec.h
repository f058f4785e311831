// Small vector helpers shared by the CPU kernels: 16 float lanes loaded from float32 or bfloat16 rows, and
// exp for 16 lanes. With AVX-512 they are single instructions (or a short polynomial); elsewhere plain loops
// over 16-lane arrays, which compilers vectorise without -ffast-math (each lane is its own sum).
//
// Every reduction here adds its 16 lanes in one fixed order, so a row's result never depends on what else is
// being computed (batch invariance).
#pragma once

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define KS_AVX512 1
#endif

namespace ks {

constexpr int LANES = 16;

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
template <typename T>
inline T from_float(float v) { return static_cast<T>(v); }  // bf16: round to nearest even (c10)

#ifdef KS_AVX512

using vec = __m512;

inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline vec load(const c10::BFloat16* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
// the first n (< 16) lanes, zeros after
inline vec load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
inline vec load_n(const c10::BFloat16* p, int n) {
  __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline void store(c10::BFloat16* p, vec v) {  // round to nearest even, as c10::BFloat16(float)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}
inline void store_n(float* p, vec v, int n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v); }
inline void store_n(c10::BFloat16* p, vec v, int n) {
  _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}
inline vec splat(float v) { return _mm512_set1_ps(v); }
inline vec zero() { return _mm512_setzero_ps(); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
inline float sum(vec v) { return _mm512_reduce_add_ps(v); }
inline float hmax(vec v) { return _mm512_reduce_max_ps(v); }

// e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 Taylor polynomial (relative error < 2e-7 on that
// range), scaled by 2^n; inputs below -87 give 0 (as expf underflows), above 88 give inf.
inline vec exp(vec x) {
  x = _mm512_max_ps(_mm512_min_ps(x, splat(88.7f)), splat(-87.5f));
  vec n = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.4426950408889634f)), _MM_FROUND_TO_NEAREST_INT);
  vec r = fma(n, splat(-0.693145751953125f), x);  // ln2 in two parts: hi exact in float, then lo
  r = fma(n, splat(-1.428606765330187e-06f), r);
  vec p = splat(1.f / 720);
  p = fma(p, r, splat(1.f / 120));
  p = fma(p, r, splat(1.f / 24));
  p = fma(p, r, splat(1.f / 6));
  p = fma(p, r, splat(0.5f));
  p = fma(p, r, splat(1.f));
  p = fma(p, r, splat(1.f));
  return _mm512_scalef_ps(p, n);
}

#else  // portable: 16-lane arrays

struct vec {
  float v[LANES];
};

template <typename T>
inline vec load_n(const T* p, int n) {
  vec r{};
  for (int i = 0; i < n; ++i) r.v[i] = to_float(p[i]);
  return r;
}
template <typename T>
inline vec load(const T* p) { return load_n(p, LANES); }
template <typename T>
inline void store_n(T* p, vec a, int n) {
  for (int i = 0; i < n; ++i) p[i] = from_float<T>(a.v[i]);
}
template <typename T>
inline void store(T* p, vec a) { store_n(p, a, LANES); }
inline vec splat(float s) {
  vec r;
  for (float& x : r.v) x = s;
  return r;
}
inline vec zero() { return splat(0.f); }
#define KS_LANEWISE(name, expr)                        \
  inline vec name(vec a, vec b) {                      \
    vec r;                                             \
    for (int i = 0; i < LANES; ++i) r.v[i] = (expr);   \
    return r;                                          \
  }
KS_LANEWISE(add, a.v[i] + b.v[i])
KS_LANEWISE(sub, a.v[i] - b.v[i])
KS_LANEWISE(mul, a.v[i] * b.v[i])
KS_LANEWISE(div, a.v[i] / b.v[i])
KS_LANEWISE(max, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
#undef KS_LANEWISE
inline vec fma(vec a, vec b, vec c) {
  vec r;
  for (int i = 0; i < LANES; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
inline float sum(vec a) {
  float s = 0.f;
  for (float x : a.v) s += x;
  return s;
}
inline float hmax(vec a) {
  float m = a.v[0];
  for (float x : a.v) m = x > m ? x : m;
  return m;
}
inline vec exp(vec a) {
  vec r;
  for (int i = 0; i < LANES; ++i) r.v[i] = std::exp(a.v[i]);
  return r;
}

#endif

// The lane sums of four vectors, [sum(a), sum(b), sum(c), sum(d)], by one tree for every slot: lanes i + 8
// onto i, then i + 4, then the four lanes of each quarter in pairs. A vector's sum never depends on which
// slot it takes or what shares the call (batch invariance).
#ifdef KS_AVX512
inline void sum4(vec a, vec b, vec c, vec d, float* out) {
  // _mm512_shuffle_f32x4 picks 128-bit quarters: 0x44 -> [a0 a1 b0 b1], 0xEE -> [a2 a3 b2 b3]
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  // 0x88 -> [ab0 ab2 cd0 cd2], 0xDD -> [ab1 ab3 cd1 cd3]: quarter q now holds vector q's 4 partial sums
  __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));  // lanes (0 + 2, 1 + 3) of each quarter
  s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));  // (0 + 2) + (1 + 3)
  _mm_storeu_ps(out, _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s)));
}
#else
inline void sum4(vec a, vec b, vec c, vec d, float* out) {  // the same tree, lane by lane
  const vec* v[4] = {&a, &b, &c, &d};
  for (int t = 0; t < 4; ++t) {
    float h[8], q[4];
    for (int i = 0; i < 8; ++i) h[i] = v[t]->v[i] + v[t]->v[i + 8];
    for (int i = 0; i < 4; ++i) q[i] = h[i] + h[i + 4];
    out[t] = (q[0] + q[2]) + (q[1] + q[3]);
  }
}
#endif

// The 16 lane partial sums of a dot of two rows of n elements (any n), float32 FMAs
template <typename A, typename B>
inline vec fma_lanes(const A* a, const B* b, int64_t n) {
  vec acc = zero();
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES) acc = fma(load(a + i), load(b + i), acc);
  if (i < n) acc = fma(load_n(a + i, static_cast<int>(n - i)), load_n(b + i, static_cast<int>(n - i)), acc);
  return acc;
}

// The same partial sums, for bfloat16 rows with AVX512-BF16 by vdpbf16ps on the rows as stored (exact products,
// float32 sums; lane l sums elements 2l, 2l + 1 of each 32). The order is fixed by n alone.
template <typename T>
inline vec partial_dot(const T* a, const T* b, int64_t n) { return fma_lanes(a, b, n); }
#ifdef KS_AVX512
template <>
inline vec partial_dot(const c10::BFloat16* a, const c10::BFloat16* b, int64_t n) {
  vec acc = zero();
  int64_t i = 0;
  for (; i + 2 * LANES <= n; i += 2 * LANES)
    acc = _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(a + i)),
                           reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + i)));
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (n - i)) - 1);
    acc = _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(m, a + i)),
                           reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(m, b + i)));
  }
  return acc;
}
#endif

// dot of two rows of n elements (any n), float accumulation in 16 lanes
template <typename A, typename B>
inline float dot(const A* a, const B* b, int64_t n) { return sum(fma_lanes(a, b, n)); }

}  // namespace ks
