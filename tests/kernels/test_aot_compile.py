"""Every kernel variant compiles for sm_90 and sm_80 and fits the chip.

Runs without a GPU: ``triton.compile`` with a CUDA target, Triton's bundled
ptxas for the register/spill log. Needs the real JIT (not the interpreter),
so ``make test`` runs it in the non-interpreted pytest process.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from kernels import aot
from kernels._backend import interpreting

pytestmark = pytest.mark.skipif(interpreting(), reason="AOT compilation needs the real JIT, not TRITON_INTERPRET=1")

VARIANTS = aot.all_variants()
JOBS = [(i, arch) for i in range(len(VARIANTS)) for arch in (90, 80)]
# fp32 runs on TF32 tensor cores with twice the register footprint; a few
# wide-head fp32 variants spill a little on sm_80 (at most 72 B seen). 16-bit ones must not spill.
MAX_SPILL_FP32 = 128


def _compile(job):
    index, arch = job
    c = aot.compile_variant(aot.all_variants()[index], arch)
    return c.shared, c.registers, c.spills


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=ctx) as pool:
        results = dict(zip(JOBS, pool.map(_compile, JOBS, chunksize=4)))
    report = tmp_path_factory.mktemp("aot") / "aot-report.txt"
    lines = [f"{VARIANTS[i].name:60s} sm_{arch} shared={s:6d} regs={r:3d} spill={sp}"
             for (i, arch), (s, r, sp) in results.items()]
    report.write_text("\n".join(lines) + "\n")
    print(f"\nAOT report ({len(lines)} compiles): {report}")
    return results


def test_every_kernel_family_is_covered():
    families = {v.fn.__name__ if hasattr(v.fn, "__name__") else v.fn.fn.__name__ for v in VARIANTS}
    assert families == {"_attention_kernel", "_paged_attention_kernel", "_paged_attention_reduce_kernel",
                        "_store_kv_kernel", "_norm_kernel", "_linear_kernel", "_gated_kernel", "_quant_linear_kernel",
                        "_splitk_kernel", "_splitk_reduce_kernel", "_rotary_kernel", "_moe_gemm_kernel"}


@pytest.mark.parametrize("job", JOBS, ids=[f"{VARIANTS[i].name}-sm{a}".replace(" ", "-") for i, a in JOBS])
def test_compiles_and_fits(compiled, job):
    shared, registers, spills = compiled[job]
    variant, arch = VARIANTS[job[0]], job[1]
    assert shared <= aot.SHARED_LIMIT[arch], f"{variant.name}: {shared} B of shared memory > sm_{arch}'s {aot.SHARED_LIMIT[arch]}"
    assert 0 < registers <= 255
    limit = MAX_SPILL_FP32 if "fp32" in variant.name else 0
    assert spills <= limit, f"{variant.name} spills {spills} B on sm_{arch}"
