// The CPU ops other C++ files call directly (the fused decoder layer); each is also a torch op
// (torch.ops.kernelserve.*) registered where it is defined.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace ks {

// quant_gemm.cpp: y = x @ W^T, W group-wise quantized in kernels/quant_gemm.py's canonical layout
at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                        const at::Tensor& offsets, int64_t bits, int64_t group_size);

// ops.cpp
std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                            const c10::optional<at::Tensor>& residual);
void rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions, const at::Tensor& cos_sin,
            bool neox);
at::Tensor act_and_mul(const at::Tensor& gate_up, const std::string& activation);
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                                  int64_t window_left, double softcap);

}  // namespace ks
