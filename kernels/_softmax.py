"""The online-softmax step shared by the attention kernels (FlashAttention-2, Dao 2023).

Scores ``s`` are already in base 2 (multiplied by ``scale * log2(e)``). With the
running row maximum ``m``, row sum ``l`` and output accumulator ``acc``:

    m' = max(m, rowmax(s));  p = 2^(s - m');  alpha = 2^(m - m')
    l' = alpha * l + rowsum(p);  acc' = alpha * acc + p @ v
"""
import triton
import triton.language as tl


@triton.jit
def online_softmax_step(acc, m_i, l_i, s, v):
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no visible key keeps m = -inf; shift by 0 so that
    # exp2(-inf - -inf) never produces NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i
