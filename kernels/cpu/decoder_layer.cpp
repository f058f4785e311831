// One Llama-family decoder layer for a decode-only step on the CPU, in one call (models/llama.py):
//
//   x, r = rms_norm(h (+ r))            qkv = x Wqkv^T (+ b)        [q/k RMSNorm per head]   rotary(q, k)
//   cache[slots] = k, v                 o = paged_attention(q)      h = o Wo^T
//   x, r = rms_norm(h + r)              out = (act(x Wg^T) * x Wu^T) Wd^T
//
// It runs the same C++ ops, in the same order, that the Python layer calls one by one (kernels/cpu/ops.cpp,
// quant_gemm.cpp; dense projections through at::linear as F.linear), so its outputs are bit-identical to that
// path: a sequence's token is computed the same way in a decode-only step (here) and in a step that also
// prefills (the Python path). What it removes is the Python between the ops: ~200 microseconds a layer.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops.h"

namespace ks {
namespace {

// A projection read off the weight list: dense (one tensor) or quantized (codes, scales, offsets).
struct Projection {
  at::Tensor weight, scales, offsets;
  int64_t bits = 0, group = 0;  // bits 0: dense
};

at::Tensor project(const at::Tensor& x, const Projection& p, const c10::optional<at::Tensor>& bias = c10::nullopt) {
  if (p.bits == 0) return at::linear(x, p.weight, bias);
  at::Tensor y = quant_linear(x, p.weight, p.scales, p.offsets, p.bits, p.group);
  return bias.has_value() ? at::add(y, *bias) : y;  // as kernels/quant_gemm.py adds it: after the GEMM, in x's dtype
}

// k, v [T, Hkv, D] (rows may be strided views of qkv) into the caches at flat slots; -1 and slots past the
// cache are skipped, as kernels.store_kv skips them
void store_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache, const at::Tensor& v_cache,
              const at::Tensor& slot_mapping) {
  const int64_t tokens = k.size(0), heads = k.size(1), d = k.size(2);
  const int64_t slots = k_cache.size(0) * k_cache.size(1), row = heads * d, elem = k.element_size();
  at::Tensor map = slot_mapping.to(at::kLong).contiguous();
  const int64_t* s = map.data_ptr<int64_t>();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  for (int64_t t = 0; t < tokens; ++t) {
    if (s[t] < 0 || s[t] >= slots) continue;
    for (int64_t h = 0; h < heads; ++h) {
      std::memcpy(kc + (s[t] * row + h * d) * elem, kp + (t * k.stride(0) + h * k.stride(1)) * elem, d * elem);
      std::memcpy(vc + (s[t] * row + h * d) * elem, vp + (t * v.stride(0) + h * v.stride(1)) * elem, d * elem);
    }
  }
}

// the layer's shape and options (layout ints), in the order kernels/cpu/ops.py writes them
struct Layout {
  int64_t hq, hkv, d, window_left, rope, neox, qk_norm, qkv_bias;
  std::string activation;
};

std::tuple<at::Tensor, at::Tensor> decode_layer(const at::Tensor& h, const c10::optional<at::Tensor>& residual,
                                                at::TensorList weights, at::IntArrayRef ints, double eps,
                                                double scale, const std::string& activation,
                                                const at::Tensor& positions, const at::Tensor& cos_sin,
                                                const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                                                const at::Tensor& seq_lens) {
  TORCH_CHECK(ints.size() == 16, "decode_layer: 16 layout ints");
  const Layout l{ints[0], ints[1], ints[2], ints[3], ints[4], ints[5], ints[6], ints[7], activation};
  size_t next = 0;
  auto take = [&]() -> const at::Tensor& {
    TORCH_CHECK(next < weights.size(), "decode_layer: fewer weights than the layout names");
    return weights[next++];
  };
  auto projection = [&](int64_t bits, int64_t group) {
    Projection p;
    p.weight = take();
    if (bits) {
      p.scales = take();
      p.offsets = take();
    }
    p.bits = bits;
    p.group = group;
    return p;
  };
  const at::Tensor& in_norm = take();
  const at::Tensor& post_norm = take();
  at::Tensor q_norm, k_norm;
  if (l.qk_norm) {
    q_norm = take();
    k_norm = take();
  }
  c10::optional<at::Tensor> qkv_bias;
  if (l.qkv_bias) qkv_bias = take();
  const Projection qkv_p = projection(ints[8], ints[9]), o_p = projection(ints[10], ints[11]);
  const Projection gate_up_p = projection(ints[12], ints[13]), down_p = projection(ints[14], ints[15]);
  TORCH_CHECK(next == weights.size(), "decode_layer: more weights than the layout names");

  const int64_t tokens = h.size(0), q_size = l.hq * l.d, kv_size = l.hkv * l.d;
  at::Tensor x, res;
  if (residual.has_value()) {
    std::tie(x, res) = rms_norm(h, in_norm, eps, residual);
  } else {
    x = std::get<0>(rms_norm(h, in_norm, eps, c10::nullopt));
    res = h;
  }
  at::Tensor qkv = project(x, qkv_p, qkv_bias);
  at::Tensor q = qkv.narrow(1, 0, q_size).view({tokens, l.hq, l.d});
  at::Tensor k = qkv.narrow(1, q_size, kv_size).view({tokens, l.hkv, l.d});
  at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({tokens, l.hkv, l.d});
  if (l.qk_norm) {
    q = std::get<0>(rms_norm(q.reshape({-1, l.d}), q_norm, eps, c10::nullopt)).view({tokens, l.hq, l.d});
    k = std::get<0>(rms_norm(k.reshape({-1, l.d}), k_norm, eps, c10::nullopt)).view({tokens, l.hkv, l.d});
  }
  if (l.rope) rotary(q, k, positions, cos_sin, l.neox != 0);
  store_kv(k, v, k_cache, v_cache, slot_mapping);
  at::Tensor o = paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, l.window_left, 0.0);
  at::Tensor attn = project(o.view({tokens, q_size}), o_p);
  at::Tensor x2, res2;
  std::tie(x2, res2) = rms_norm(attn, post_norm, eps, res);
  at::Tensor out = project(act_and_mul(project(x2, gate_up_p), l.activation), down_p);
  return {out, res2};
}

}  // namespace
}  // namespace ks

TORCH_LIBRARY_FRAGMENT(kernelserve, m) {
  m.def("decode_layer(Tensor h, Tensor? residual, Tensor[] weights, int[] layout, float eps, float scale, "
        "str activation, Tensor positions, Tensor cos_sin, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping, Tensor block_tables, Tensor seq_lens) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kernelserve, CPU, m) { m.impl("decode_layer", &ks::decode_layer); }
