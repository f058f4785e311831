// Fused CPU ops for the decoder's elementwise work and decode attention: each replaces several eager torch ops
// (casts, views, temporaries) with one pass over its rows. Plain-torch references are in kernels/norms.py,
// kernels/rope.py, kernels/gemm.py and kernels/paged.py; tests/kernels/test_cpu_kernels.py compares the two.
//
// Every op works row by row (token by token, or sequence by sequence for attention) and splits rows over
// threads without changing any row's arithmetic: a row's result does not depend on the rows beside it.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace ks {

// rows per thread task for cheap per-row work: small steps (decode) stay on one thread
int64_t grain(int64_t row_cost) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(row_cost, 1)); }

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, name, ": expected [rows, features] with unit column stride");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, ": float32 or bfloat16");
}

// ---- RMSNorm (optionally after adding the residual) ----------------------------------------------------------
// h = x + residual (rounded to x's dtype, as torch's add), y = h * rsqrt(mean(h^2) + eps) * w, statistics in
// float32.
template <typename T>
void rms_norm_rows(const T* x, int64_t ldx, const T* res, int64_t ldr, const T* w, float eps, T* y, T* h,
                   int64_t rows, int64_t n) {
  at::parallel_for(0, rows, grain(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * ldx;
      const T* hr = xr;
      if (res) {  // write h first: the statistics are taken over the rounded sum, as the reference does
        T* out = h + r * n;
        const T* rr = res + r * ldr;
        int64_t i = 0;
        for (; i + ks::LANES <= n; i += ks::LANES) ks::store(out + i, ks::add(ks::load(xr + i), ks::load(rr + i)));
        if (i < n) {
          int tail = static_cast<int>(n - i);
          ks::store_n(out + i, ks::add(ks::load_n(xr + i, tail), ks::load_n(rr + i, tail)), tail);
        }
        hr = out;
      }
      const float rstd = 1.f / std::sqrt(ks::dot(hr, hr, n) / static_cast<float>(n) + eps);
      const vec s = ks::splat(rstd);
      T* yr = y + r * n;
      int64_t i = 0;
      for (; i + ks::LANES <= n; i += ks::LANES) ks::store(yr + i, ks::mul(ks::mul(ks::load(hr + i), s), ks::load(w + i)));
      if (i < n) {
        int tail = static_cast<int>(n - i);
        ks::store_n(yr + i, ks::mul(ks::mul(ks::load_n(hr + i, tail), s), ks::load_n(w + i, tail)), tail);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                            const c10::optional<at::Tensor>& residual) {
  check_rows(x, "x");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 1 && weight.size(0) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(), "weight: contiguous [features], x's dtype");
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor y = at::empty({rows, n}, x.options());
  at::Tensor h = x;
  const bool add = residual.has_value() && residual->defined();
  if (add) {
    check_rows(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type(), "residual: x's shape");
    h = at::empty({rows, n}, x.options());
  }
  AT_DISPATCH_SWITCH(x.scalar_type(), "rms_norm",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        rms_norm_rows<float>(x.data_ptr<float>(), x.stride(0), add ? residual->data_ptr<float>() : nullptr,
                             add ? residual->stride(0) : 0, weight.data_ptr<float>(), static_cast<float>(eps),
                             y.data_ptr<float>(), add ? h.data_ptr<float>() : nullptr, rows, n);
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        using B = c10::BFloat16;
        rms_norm_rows<B>(x.data_ptr<B>(), x.stride(0), add ? residual->data_ptr<B>() : nullptr,
                         add ? residual->stride(0) : 0, weight.data_ptr<B>(), static_cast<float>(eps),
                         y.data_ptr<B>(), add ? h.data_ptr<B>() : nullptr, rows, n);
      }));
  return {y, h};
}

// ---- rotary embeddings, in place -----------------------------------------------------------------------------
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin over the first rot_dim features of each head: halves (NeoX) or
// interleaved pairs (GPT-J). cos_sin float32 [positions, rot_dim] (cos then sin); a token whose position lies
// outside the table is left unrotated, as the Triton kernel leaves it.
template <typename T>
void rotate_heads(T* base, int64_t s_tok, int64_t s_head, int64_t heads, const int64_t* pos, int64_t tokens,
                  const float* cs, int64_t table_rows, int64_t rot, bool neox) {
  const int64_t half = rot / 2;
  at::parallel_for(0, tokens, grain(heads * rot), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (pos[t] < 0 || pos[t] >= table_rows) continue;
      const float* cos = cs + pos[t] * rot;
      const float* sin = cos + half;
      for (int64_t hd = 0; hd < heads; ++hd) {
        T* x = base + t * s_tok + hd * s_head;
        if (neox) {
          int64_t i = 0;
          for (; i + ks::LANES <= half; i += ks::LANES) {
            vec a = ks::load(x + i), b = ks::load(x + half + i), c = ks::load(cos + i), s = ks::load(sin + i);
            ks::store(x + i, ks::sub(ks::mul(a, c), ks::mul(b, s)));
            ks::store(x + half + i, ks::add(ks::mul(b, c), ks::mul(a, s)));
          }
          for (; i < half; ++i) {
            float a = ks::to_float(x[i]), b = ks::to_float(x[half + i]);
            x[i] = ks::from_float<T>(a * cos[i] - b * sin[i]);
            x[half + i] = ks::from_float<T>(b * cos[i] + a * sin[i]);
          }
        } else {
          for (int64_t i = 0; i < half; ++i) {
            float a = ks::to_float(x[2 * i]), b = ks::to_float(x[2 * i + 1]);
            x[2 * i] = ks::from_float<T>(a * cos[i] - b * sin[i]);
            x[2 * i + 1] = ks::from_float<T>(b * cos[i] + a * sin[i]);
          }
        }
      }
    }
  });
}

void rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions, const at::Tensor& cos_sin,
            bool neox) {
  for (const at::Tensor* t : {&q, &k}) {
    TORCH_CHECK(t->dim() == 3 && t->stride(2) == 1, "q/k: expected [tokens, heads, head_dim], unit feature stride");
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->size(0) == q.size(0), "q/k: same dtype and tokens");
  }
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, "q/k: float32 or bfloat16");
  TORCH_CHECK(cos_sin.scalar_type() == at::kFloat && cos_sin.is_contiguous() && cos_sin.dim() == 2,
              "cos_sin: contiguous float32 [positions, rot_dim]");
  const int64_t rot = cos_sin.size(1);
  TORCH_CHECK(rot % 2 == 0 && rot <= q.size(2), "cos_sin: rot_dim even and at most the head dim");
  at::Tensor pos = positions.to(at::kLong).contiguous();
  TORCH_CHECK(pos.dim() == 1 && pos.size(0) == q.size(0), "positions: one per token");
  for (const at::Tensor* t : {&q, &k}) {
    AT_DISPATCH_SWITCH(t->scalar_type(), "rotary",
        AT_DISPATCH_CASE(at::kFloat, [&] {
          rotate_heads<float>(t->data_ptr<float>(), t->stride(0), t->stride(1), t->size(1), pos.data_ptr<int64_t>(),
                              t->size(0), cos_sin.data_ptr<float>(), cos_sin.size(0), rot, neox);
        })
        AT_DISPATCH_CASE(at::kBFloat16, [&] {
          rotate_heads<c10::BFloat16>(t->data_ptr<c10::BFloat16>(), t->stride(0), t->stride(1), t->size(1),
                                      pos.data_ptr<int64_t>(), t->size(0), cos_sin.data_ptr<float>(), cos_sin.size(0),
                                      rot, neox);
        }));
  }
}

// ---- gated activation: act(gate) * up ------------------------------------------------------------------------
// silu(g) = g / (1 + e^-g); gelu_tanh(g) = g / (1 + e^(-2 sqrt(2/pi) (g + 0.044715 g^3))), the same function as
// 0.5 g (1 + tanh(...)) written without tanh.
enum class Act { silu, gelu_tanh };

inline vec activate(vec g, Act act) {
  vec z = g;
  if (act == Act::gelu_tanh)
    z = ks::mul(ks::splat(1.5957691216057308f), ks::fma(ks::mul(ks::splat(0.044715f), ks::mul(g, g)), g, g));
  return ks::div(g, ks::add(ks::splat(1.f), ks::exp(ks::sub(ks::zero(), z))));
}

template <typename T>
void act_mul_rows(const T* gu, int64_t ld, T* y, int64_t rows, int64_t n, Act act) {
  at::parallel_for(0, rows, grain(4 * n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = gu + r * ld;
      const T* u = g + n;
      T* out = y + r * n;
      int64_t i = 0;
      for (; i + ks::LANES <= n; i += ks::LANES) ks::store(out + i, ks::mul(activate(ks::load(g + i), act), ks::load(u + i)));
      if (i < n) {
        int tail = static_cast<int>(n - i);
        ks::store_n(out + i, ks::mul(activate(ks::load_n(g + i, tail), act), ks::load_n(u + i, tail)), tail);
      }
    }
  });
}

at::Tensor act_and_mul(const at::Tensor& gate_up, const std::string& activation) {
  check_rows(gate_up, "gate_up");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "gate_up: an even number of features (gate, then up)");
  TORCH_CHECK(activation == "silu" || activation == "gelu_tanh", "activation: silu or gelu_tanh");
  const Act act = activation == "silu" ? Act::silu : Act::gelu_tanh;
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2;
  at::Tensor y = at::empty({rows, n}, gate_up.options());
  AT_DISPATCH_SWITCH(gate_up.scalar_type(), "act_and_mul",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        act_mul_rows<float>(gate_up.data_ptr<float>(), gate_up.stride(0), y.data_ptr<float>(), rows, n, act);
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        act_mul_rows<c10::BFloat16>(gate_up.data_ptr<c10::BFloat16>(), gate_up.stride(0),
                                    y.data_ptr<c10::BFloat16>(), rows, n, act);
      }));
  return y;
}

// Per-thread buffers of decode_one, reused across the pairs a thread takes.
struct DecodeScratch {
  std::vector<float> scores, acc, totals;
  std::vector<int64_t> rows;  // element offset of each visible key's row in the caches; -1 where skipped
};

// ---- decode attention over the paged cache -------------------------------------------------------------------
// One query per sequence. For each (sequence, KV head) the group's G query heads score every visible key once
// (float32), softmax in float32, then the weighted sum of values. Keys behind a sliding window (left > = 0) and
// cache blocks whose index is out of range are skipped; softcap > 0 maps s to softcap * tanh(s / softcap).
//
// Scores: four keys at a time, each head's 16 lane partial dots (ks::partial_dot: bf16 rows dotted as stored)
// summed by ks::sum4. Values: 16 features at a time, up to 8 heads' sums in registers, each value chunk converted
// once for all of them; every output element sums p[t] v[t] over keys in order. Every order is fixed by the
// sequence alone.

constexpr int64_t KEYS_A_STEP = 4;  // keys scored together (one ks::sum4 a head)
constexpr int HEADS_A_PASS = 8;     // value sums held in registers

// scores[g, t] = scale * q[g] . k[t] for keys [i, i + n), n <= 4; -inf where not visible
template <typename T>
void score_keys(const T* q, int64_t q_stride_h, int64_t group, int64_t d, const T* kc, const int64_t* rows,
                int64_t n, float scale, float softcap, float* scores, int64_t span) {
  for (int64_t g = 0; g < group; ++g) {
    const T* qg = q + g * q_stride_h;
    // four named accumulators (an array indexed under a condition would live on the stack)
    auto partial = [&](int64_t t) { return t < n && rows[t] >= 0 ? ks::partial_dot(qg, kc + rows[t], d) : ks::zero(); };
    const ks::vec a0 = partial(0), a1 = partial(1), a2 = partial(2), a3 = partial(3);
    float dots[KEYS_A_STEP];
    ks::sum4(a0, a1, a2, a3, dots);
    for (int64_t t = 0; t < n; ++t) {
      float s = dots[t] * scale;
      if (softcap > 0) s = softcap * std::tanh(s / softcap);
      scores[g * span + t] = rows[t] < 0 ? -std::numeric_limits<float>::infinity() : s;
    }
  }
}

// acc[g, :] = sum over visible t of p[g, t] v[t, :] for the H heads [g0, g0 + H), their sums in registers
template <int H, typename T>
void sum_values(const float* p, int64_t span, const T* vc, const int64_t* rows, int64_t d, int64_t g0, float* acc) {
  for (int64_t j = 0; j < d; j += ks::LANES) {
    const int width = static_cast<int>(std::min<int64_t>(ks::LANES, d - j));
    ks::vec a[H];
    for (int h = 0; h < H; ++h) a[h] = ks::zero();
    for (int64_t t = 0; t < span; ++t) {
      if (rows[t] < 0) continue;
      const ks::vec v = width == ks::LANES ? ks::load(vc + rows[t] + j) : ks::load_n(vc + rows[t] + j, width);
      for (int h = 0; h < H; ++h) a[h] = ks::fma(ks::splat(p[(g0 + h) * span + t]), v, a[h]);
    }
    for (int h = 0; h < H; ++h) ks::store_n(acc + (g0 + h) * d + j, a[h], width);
  }
}

template <typename T>
void sum_values(const float* p, int64_t span, const T* vc, const int64_t* rows, int64_t d, int64_t group,
                float* acc) {
  for (int64_t g0 = 0; g0 < group; g0 += HEADS_A_PASS) {
    switch (std::min<int64_t>(HEADS_A_PASS, group - g0)) {
      case 1: sum_values<1>(p, span, vc, rows, d, g0, acc); break;
      case 2: sum_values<2>(p, span, vc, rows, d, g0, acc); break;
      case 3: sum_values<3>(p, span, vc, rows, d, g0, acc); break;
      case 4: sum_values<4>(p, span, vc, rows, d, g0, acc); break;
      case 5: sum_values<5>(p, span, vc, rows, d, g0, acc); break;
      case 6: sum_values<6>(p, span, vc, rows, d, g0, acc); break;
      case 7: sum_values<7>(p, span, vc, rows, d, g0, acc); break;
      default: sum_values<8>(p, span, vc, rows, d, g0, acc); break;
    }
  }
}

template <typename T>
void decode_one(const T* q, int64_t q_stride_h, const T* kc, const T* vc, int64_t nb, int64_t bs, int64_t hkv,
                int64_t d, const int32_t* table, int64_t max_blocks, int64_t ctx, int64_t head, int64_t group,
                float scale, int64_t left, float softcap, T* out, int64_t out_stride_h, DecodeScratch& w) {
  const int64_t first = left >= 0 ? std::max<int64_t>(0, ctx - 1 - left) : 0;
  const int64_t span = std::max<int64_t>(0, ctx - first);
  // rows resolved once, a block at a time (no division a key)
  w.rows.assign(span, -1);
  for (int64_t blk = first / bs; blk * bs < ctx; ++blk) {
    const int64_t b = blk < max_blocks ? table[blk] : -1;
    if (b < 0 || b >= nb) continue;
    const int64_t t0 = std::max(first, blk * bs), t1 = std::min(ctx, (blk + 1) * bs);
    for (int64_t t = t0; t < t1; ++t) w.rows[t - first] = ((b * bs + t - blk * bs) * hkv + head) * d;
  }
  w.scores.assign(group * std::max<int64_t>(span, 1), -std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < span; i += KEYS_A_STEP)
    score_keys(q, q_stride_h, group, d, kc, w.rows.data() + i, std::min(KEYS_A_STEP, span - i), scale, softcap,
               w.scores.data() + i, span);
  // softmax of each head's scores (unnormalised; 1 / total applied at the end), then sum_t p[g, t] v[t]
  w.totals.assign(group, 0.f);  // 0: no visible key
  for (int64_t g = 0; g < group; ++g) {
    float* s = w.scores.data() + g * span;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < span; ++i) m = std::max(m, s[i]);
    if (m == -std::numeric_limits<float>::infinity()) {  // no visible key: zeros, as the reference
      for (int64_t i = 0; i < span; ++i) s[i] = 0.f;
      continue;
    }
    float total = 0.f;
    int64_t i = 0;
    for (; i + ks::LANES <= span; i += ks::LANES) {
      vec e = ks::exp(ks::sub(ks::load(s + i), ks::splat(m)));
      ks::store(s + i, e);
      total += ks::sum(e);
    }
    for (; i < span; ++i) {
      s[i] = std::exp(s[i] - m);
      total += s[i];
    }
    w.totals[g] = total;
  }
  w.acc.resize(group * d);
  sum_values(w.scores.data(), span, vc, w.rows.data(), d, group, w.acc.data());
  for (int64_t g = 0; g < group; ++g) {
    T* o = out + g * out_stride_h;
    const float inv = w.totals[g] > 0.f ? 1.f / w.totals[g] : 0.f;
    for (int64_t j = 0; j < d; ++j) o[j] = ks::from_float<T>(w.acc[g * d + j] * inv);
  }
}

// (sequence, KV head) pairs split over threads; each pair's arithmetic is fixed by its own sequence
template <typename T>
void decode_all(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, int64_t window_left,
                double softcap, at::Tensor& out) {
  const int64_t hq = q.size(1), d = q.size(2), nb = k_cache.size(0), bs = k_cache.size(1), hkv = k_cache.size(2);
  const int64_t group = hq / hkv, max_blocks = block_tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kc = k_cache.data_ptr<T>();
  const T* vc = v_cache.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();
  // Work items: (sequence, KV head) pairs, or with fewer pairs than two a thread (one sequence: 3 pairs on 2
  // threads left one idle a third of the time) one query head each. A head's scores, softmax and sums never
  // depend on which heads share its item, so the split cannot change any output.
  const int64_t pairs = q.size(0) * hkv;
  const int64_t heads_an_item = pairs >= 2 * at::get_num_threads() ? group : 1;
  const int64_t items_a_pair = group / heads_an_item;
  at::parallel_for(0, pairs * items_a_pair, 1, [&](int64_t i0, int64_t i1) {
    DecodeScratch scratch;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t pair = i / items_a_pair, b = pair / hkv, head = pair % hkv;
      const int64_t first_head = head * group + (i % items_a_pair) * heads_an_item;
      decode_one<T>(qp + b * q.stride(0) + first_head * q.stride(1), q.stride(1), kc, vc, nb, bs, hkv, d,
                    tables + b * block_tables.stride(0), max_blocks, std::max<int64_t>(0, lens[b]), head,
                    heads_an_item, static_cast<float>(scale), window_left, static_cast<float>(softcap),
                    op + b * out.stride(0) + first_head * out.stride(1), out.stride(1), scratch);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                                  int64_t window_left, double softcap) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q: [batch, heads, head_dim] with unit feature stride");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
                  k_cache.sizes() == v_cache.sizes(), "caches: contiguous [blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "q and caches: one dtype");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, "q: float32 or bfloat16");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables: int32 [batch, max_blocks]");
  TORCH_CHECK(seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous(), "seq_lens: int32 [batch]");
  const int64_t batch = q.size(0), hq = q.size(1), d = q.size(2);
  const int64_t nb = k_cache.size(0), bs = k_cache.size(1), hkv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == d && hq % hkv == 0, "heads: q's head count a multiple of the cache's");
  TORCH_CHECK(block_tables.size(0) == batch && seq_lens.size(0) == batch, "one table row and length a sequence");
  at::Tensor out = at::empty({batch, hq, d}, q.options());
  AT_DISPATCH_SWITCH(q.scalar_type(), "paged_decode_attention",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        decode_all<float>(q, k_cache, v_cache, block_tables, seq_lens, scale, window_left, softcap, out);
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        decode_all<c10::BFloat16>(q, k_cache, v_cache, block_tables, seq_lens, scale, window_left, softcap, out);
      }));
  return out;
}

}  // namespace ks

TORCH_LIBRARY_FRAGMENT(kernelserve, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps, Tensor? residual) -> (Tensor, Tensor)");
  m.def("rotary(Tensor(a!) q, Tensor(b!) k, Tensor positions, Tensor cos_sin, bool neox) -> ()");
  m.def("act_and_mul(Tensor gate_up, str activation) -> Tensor");
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
        "float scale, int window_left, float softcap) -> Tensor");
}

TORCH_LIBRARY_IMPL(kernelserve, CPU, m) {
  m.impl("rms_norm", &ks::rms_norm);
  m.impl("rotary", &ks::rotary);
  m.impl("act_and_mul", &ks::act_and_mul);
  m.impl("paged_decode_attention", &ks::paged_decode_attention);
}
