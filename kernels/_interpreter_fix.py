"""Work around a Triton interpreter bug: ``tl.dot`` on bfloat16 operands.

The interpreter (checked on triton 3.6) stores bfloat16 tensors as raw
``uint16`` bit patterns and its ``create_dot`` multiplies those integers
directly, so every bf16 dot returns garbage. Only fp8 operands are converted
first. This patch widens bf16 operands to float32 before the matmul — exact,
since every bf16 value is a float32 value — and leaves every other dtype to the
original. It touches the interpreter only; compiled kernels never run it.
"""
from __future__ import annotations

import numpy as np


def patch_interpreter_bf16_dot() -> None:
    from triton import language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_kernelserve_bf16", False):
        return
    original = builder.create_dot

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot._kernelserve_bf16 = True
    builder.create_dot = create_dot
