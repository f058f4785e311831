"""Weight-only quantized GEMM (w4a16 / w8a16): ``y = act(x @ W^T + b)`` with ``W`` dequantised in the kernel.

``W [N, K]`` is stored group-wise along K as unsigned integer codes with one
scale and one offset per group of ``group_size`` columns:

    W[n, k] = scales[n, k // group_size] * code[n, k] + offsets[n, k // group_size]

which holds GGUF's Q4_0 (offset = -8 d), Q4_1 (offset = m), Q8_0 (code = q + 128,
offset = -128 d) and Q4_K (scale = d * sc, offset = -dmin * m) exactly, and
round-to-nearest int4/int8 quantisation of a full-precision checkpoint.
Scales and offsets are float32, so ``scale * code + offset`` is the value the
GGUF dequantiser computes, bit for bit; :func:`pack_codes` stores them in float16
where every value is exact in it (GGUF's Q4_0, Q4_1 and Q8_0 hold float16 ``d``
and ``m``), which computes the same values from a quarter fewer bytes of weight.

Layouts: 8-bit codes are ``uint8 [N, K]``; 4-bit codes are packed two to a
byte, ``uint8 [N, K / 2]``, column ``2j`` in the low nibble of byte ``j`` and
column ``2j + 1`` in the high nibble. The Triton kernel reads the packed bytes
once and splits them into an even-column and an odd-column tile, multiplying
each with the matching stride-2 columns of ``x`` (two dots, no interleave).

The CPU path is kernelserve's own C++ kernel (``kernels/cpu/quant_gemm.cpp``): it reads this
layout directly (the only copy of the weight), unpacks each 32-column chunk of a weight row once for
all rows of the call, and sums every output in an order fixed by K alone (batch invariant).
Without it (no compiler, ``KERNELSERVE_CPU_KERNELS=0``, group sizes it does not vectorise), torch's
packed int4 kernel (``_weight_int4pack_mm_for_cpu``, ``w = (q - 8) * scale + zero``) runs from a
second, repacked copy: a 4-bit weight is one call; an 8-bit code ``c = 16 h + l`` is two calls over
its nibbles, ``W = (16 s h - 128 s) + (s l + o + 128 s)``; its float32 path is exact but slow.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import interpreting
from ._validate import FLOAT_DTYPES, checking, check_shape, check_tensor, expect
from .gemm import _ACT_CODE, ACTIVATIONS, _activate, _tile_ids, activation_ref, as_rows, tile_grid
from .tuning import Tuner, m_bucket

log = logging.getLogger("kernelserve.kernels")

GROUP_SIZES = (16, 32, 64, 128, 256)
SCALE_DTYPES = (torch.float32, torch.float16)
CPU_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 CPU kernel takes


@dataclass(eq=False)
class QuantizedWeight:
    """A group-wise quantized ``[N, K]`` weight (see the module docstring for the math and layouts)."""
    qweight: torch.Tensor  # uint8 [N, K * bits / 8]
    scales: torch.Tensor  # float32 (or float16 where exact) [N, K / group_size]
    offsets: torch.Tensor  # same dtype and shape as scales
    bits: int
    group_size: int
    _cpu: dict = field(default_factory=dict, repr=False)  # activation dtype -> torch's packed layout

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * 8 // self.bits

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.offsets))

    def codes(self) -> torch.Tensor:
        """The unpacked codes, uint8 ``[N, K]``."""
        if self.bits == 8:
            return self.qweight
        return torch.stack([self.qweight & 0xF, self.qweight >> 4], dim=-1).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groups(self.codes(), self.scales, self.offsets, self.group_size, dtype)

    def to(self, device) -> "QuantizedWeight":
        return QuantizedWeight(self.qweight.to(device), self.scales.to(device), self.offsets.to(device),
                               self.bits, self.group_size)


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group_size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scales * codes + offsets`` group-wise in float32 (the GGUF dequantiser's arithmetic), then ``dtype``."""
    w = codes.float() * scales.float().repeat_interleave(group_size, 1) + offsets.float().repeat_interleave(group_size, 1)
    return w.to(dtype)


def pack_codes(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
               group_size: int) -> QuantizedWeight:
    """A :class:`QuantizedWeight` from unpacked uint8 codes ``[N, K]`` and per-group scales/offsets."""
    expect(bits in (4, 8), lambda: f"bits: expected 4 or 8, got {bits}")
    expect(group_size in GROUP_SIZES, lambda: f"group_size: expected one of {GROUP_SIZES}, got {group_size}")
    check_tensor("codes", codes, ndim=2, dtypes=(torch.uint8,))
    n, k = codes.shape
    expect(k % group_size == 0, lambda: f"codes: {k} columns are not a multiple of group_size {group_size}")
    for name, t in (("scales", scales), ("offsets", offsets)):
        check_tensor(name, t, ndim=2, dtypes=(torch.float32,), device=codes.device)
        check_shape(name, t, (n, k // group_size))
    if bits == 4:
        expect(codes.numel() == 0 or int(codes.max()) < 16, "codes: 4-bit codes must be below 16")
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    scales, offsets = _compact(scales, offsets)
    return QuantizedWeight(codes.contiguous(), scales.contiguous(), offsets.contiguous(), bits, group_size)


def _compact(scales: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 copies of float32 scales and offsets when every value survives the round trip exactly."""
    half_s, half_o = scales.half(), offsets.half()
    if torch.equal(half_s.float(), scales) and torch.equal(half_o.float(), offsets):
        return half_s, half_o
    return scales, offsets


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int) -> QuantizedWeight:
    """Round-to-nearest group-wise quantisation of a full-precision ``[N, K]`` weight.

    4-bit: asymmetric, ``scale = (max - min) / 15``, ``offset = min`` (codes 0..15).
    8-bit: symmetric, ``scale = absmax / 127``, ``code = round(w / scale) + 128``, ``offset = -128 scale``.
    """
    expect(w.dim() == 2, "w: expected a 2-D weight [out, in]")
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    if bits == 4:
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp_min(1e-12)
        codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15)
        offset = low
    else:
        scale = (groups.abs().amax(-1) / 127).clamp_min(1e-12)
        codes = (groups / scale[..., None]).round().clamp(-127, 127) + 128
        offset = -128 * scale
    return pack_codes(codes.to(torch.uint8).reshape(n, k), scale, offset, bits, group_size)


# -- Triton ---------------------------------------------------------------------------------------

def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): decode tiles (M <= 16: the whole step is one read of the
# packed weight) first, then prefill tiles. A K tile never spans two groups (BLOCK_K <= group size), so a
# tile's scales and offsets are one vector over N; the AOT test compiles each for sm_80 and sm_90.
QUANT_CONFIGS = {
    16: _configs([(16, 64, 32, 4, 4), (16, 128, 32, 4, 4), (16, 64, 64, 4, 4), (16, 128, 64, 4, 3),
                  (16, 64, 16, 4, 4), (64, 64, 32, 4, 3), (64, 128, 64, 4, 3), (128, 128, 32, 8, 3),
                  (64, 64, 16, 4, 3)]),
    32: _configs([(16, 64, 32, 4, 3), (16, 64, 16, 4, 3), (64, 64, 32, 4, 3), (64, 64, 16, 4, 3)]),
}


def quant_configs(dtype: torch.dtype, bits: int, group_size: int) -> list:
    """The tile candidates for these operands: K tiles inside one group, and (4-bit) at least 32 wide,
    since each dot takes half a tile and ``tl.dot`` needs 16."""
    least = 32 if bits == 4 else 16
    return [c for c in QUANT_CONFIGS[32 if dtype == torch.float32 else 16]
            if least <= c.kwargs["BLOCK_K"] <= group_size]


@triton.jit(do_not_specialize=["M"])  # varies per step: one compilation for all values
def _quant_linear_kernel(
    X, Q, S, O, Bias, Y, M, N, K, M_BUCKET,
    stride_xm, stride_qn, stride_sn, stride_ym,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_rows = X + offs_m[:, None].to(tl.int64) * stride_xm
    q_cols = Q + offs_n[None, :].to(tl.int64) * stride_qn  # W^T tiles: [K-ish, BLOCK_N]
    s_row = S + offs_n.to(tl.int64) * stride_sn
    o_row = O + offs_n.to(tl.int64) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if BITS == 4:
        half = tl.arange(0, BLOCK_K // 2)
        for k0 in range(0, K, BLOCK_K):
            even = k0 + 2 * half  # columns 2j; their odd neighbours share the byte (and the group)
            k_ok = even < K
            byte = tl.load(q_cols + (even // 2)[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0)
            # the whole tile lies in group k0 // GROUP (BLOCK_K <= GROUP): one scale and offset per column n
            scale = tl.load(s_row + k0 // GROUP, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            offset = tl.load(o_row + k0 // GROUP, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            w_even = ((byte & 0xF).to(tl.float32) * scale + offset).to(X.dtype.element_ty)
            w_odd = ((byte >> 4).to(tl.float32) * scale + offset).to(X.dtype.element_ty)
            x_mask = m_ok[:, None] & k_ok[None, :]
            x_even = tl.load(x_rows + even[None, :], mask=x_mask, other=0.0)
            x_odd = tl.load(x_rows + (even + 1)[None, :], mask=x_mask, other=0.0)
            acc = tl.dot(x_even, w_even, acc)
            acc = tl.dot(x_odd, w_odd, acc)
    else:
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + offs_k
            k_ok = cols < K
            code = tl.load(q_cols + cols[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0)
            scale = tl.load(s_row + k0 // GROUP, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            offset = tl.load(o_row + k0 // GROUP, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            w = (code.to(tl.float32) * scale + offset).to(X.dtype.element_ty)
            x = tl.load(x_rows + cols[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = _activate(acc, ACT)
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


QUANT_TUNER = Tuner("quant_linear", _quant_linear_kernel, quant_configs)


def _check_quant_args(x, qw, bias, activation):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    expect(isinstance(qw, QuantizedWeight), lambda: f"weight: expected a QuantizedWeight, got {type(qw).__name__}")
    n, k = qw.shape
    expect(x.dim() >= 1 and x.shape[-1] == k, lambda: f"x: expected [..., {k}], got {list(x.shape)}")
    check_tensor("weight.qweight", qw.qweight, ndim=2, dtypes=(torch.uint8,), device=x.device)
    for name, t in (("weight.scales", qw.scales), ("weight.offsets", qw.offsets)):
        check_tensor(name, t, ndim=2, dtypes=SCALE_DTYPES, device=x.device)
        check_shape(name, t, (n, k // qw.group_size))
    expect(qw.scales.dtype == qw.offsets.dtype, "weight: scales and offsets must share a dtype")
    expect(qw.bits in (4, 8) and qw.group_size in GROUP_SIZES and k % qw.group_size == 0,
           lambda: f"weight: unsupported bits={qw.bits} / group_size={qw.group_size} for K={k}")
    expect(qw.bits == 8 or qw.group_size >= 32, lambda: f"weight: 4-bit groups must be >= 32, got {qw.group_size}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
        check_shape("bias", bias, (n,))
    expect(activation in ACTIVATIONS, lambda: f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def quant_linear_triton(x, qw: QuantizedWeight, bias=None, activation=None, *, config=None):
    """Dequantise-in-the-GEMM; see the module docstring. ``config`` pins one tile config (tests)."""
    _check_quant_args(x, qw, bias, activation)
    x2 = as_rows(x)
    M, K = x2.shape
    N = qw.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M and N:
        args = (x2, qw.qweight, qw.scales, qw.offsets, bias if bias is not None else qw.scales, y, M, N, K,
                m_bucket(M), x2.stride(0), qw.qweight.stride(0), qw.scales.stride(0), y.stride(0))
        kwargs = dict(BITS=qw.bits, GROUP=qw.group_size, HAS_BIAS=bias is not None, ACT=_ACT_CODE[activation])
        grid = tile_grid(M, N)
        if config is None and not interpreting():
            key = (str(x.dtype).removeprefix("torch."), m_bucket(M), N, K, *sorted(kwargs.items()))
            QUANT_TUNER.launch(key, grid, args, kwargs, (x.dtype, qw.bits, qw.group_size), device=x.device)
        else:
            config = config or quant_configs(x.dtype, qw.bits, qw.group_size)[0]
            _quant_linear_kernel[grid(config)](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                                               num_stages=config.num_stages)
    return y.view(*x.shape[:-1], N)


# -- torch (CPU) ------------------------------------------------------------------------------------

def _int4_parts(qw: QuantizedWeight) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(4-bit codes int32 [N, K], scale, offset) parts whose sum is W: one for 4 bits, two nibbles for 8."""
    codes, scales, offsets = qw.codes(), qw.scales.float(), qw.offsets.float()
    if qw.bits == 4:
        return [(codes.int(), scales, offsets)]
    # c = 16 h + l: W = 16 s h - 128 s  +  s l + (o + 128 s). Both parts then have small zeros in torch's
    # form (0 and o + 136 s, i.e. 8 s for Q8_0), which 16-bit scales-and-zeros round the least.
    high, low = (codes >> 4).int(), (codes & 0xF).int()
    return [(high, 16 * scales, -128 * scales), (low, scales, offsets + 128 * scales)]


def cpu_supported(qw: QuantizedWeight) -> bool:
    """Whether torch's packed int4 CPU kernel takes this weight (the fallback of the C++ kernel)."""
    n, k = qw.shape
    return n % 16 == 0 and qw.group_size in CPU_GROUP_SIZES and k % qw.group_size == 0


def uses_cpu_kernel(qw: QuantizedWeight, dtype: torch.dtype) -> bool:
    """Whether kernelserve's C++ kernel runs this weight with ``dtype`` activations (vectorised: groups of a
    multiple of 32 columns, float32 or bfloat16)."""
    from . import cpu

    return (qw.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and qw.group_size % 32 == 0
            and cpu.vectorised())


def _cpu_layout(qw: QuantizedWeight, dtype: torch.dtype) -> list:
    """torch's packed int4 layout per part, with scales and zeros ``[K / g, N, 2]`` in the activation dtype:
    ``(q - 8) * scale + zero = scale * q + offset`` gives ``zero = offset + 8 scale``."""
    if dtype not in qw._cpu:
        qw._cpu[dtype] = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1),
                           torch.stack([scale.t(), (offset + 8 * scale).t()], dim=-1).contiguous().to(dtype))
                          for codes, scale, offset in _int4_parts(qw)]
    return qw._cpu[dtype]


def prepare_cpu(qw: QuantizedWeight, dtype: torch.dtype) -> None:
    """At load rather than on the first forward: build the C++ kernels or, where they do not run this
    weight, torch's packed layout (a second copy)."""
    if not uses_cpu_kernel(qw, dtype) and cpu_supported(qw):
        _cpu_layout(qw, dtype)


def quant_linear_cpu(x, qw: QuantizedWeight, bias=None, activation=None, *, float_out: bool = False):
    """The CPU path: kernelserve's C++ kernel, else torch's packed int4 matmul (no dense weight either way).
    ``float_out``: the result in float32 (the C++ kernel writes it so, without a 16-bit rounding)."""
    _check_quant_args(x, qw, bias, activation)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if uses_cpu_kernel(qw, x.dtype):
        y = torch.ops.kernelserve.quant_linear(x2, qw.qweight, qw.scales, qw.offsets, qw.bits, qw.group_size,
                                               float_out)
    elif cpu_supported(qw):
        y = None
        for packed, scales_zeros in _cpu_layout(qw, x.dtype):
            part = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, qw.group_size, scales_zeros)
            y = part if y is None else y + part
    else:
        y = quant_linear_ref(x, qw, bias, activation)
        return y.float() if float_out else y
    if bias is not None:
        y = y + bias
    y = activation_ref(y, activation).view(*x.shape[:-1], qw.shape[0])
    return y.float() if float_out else y


def quant_linear_ref(x, qw: QuantizedWeight, bias=None, activation=None):
    """Reference: dequantise (float32, then x's dtype) and ``F.linear`` — what a dequantised model computes."""
    _check_quant_args(x, qw, bias, activation)
    return activation_ref(F.linear(x, qw.dequantize(x.dtype), bias), activation)
