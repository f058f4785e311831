"""The C++ CPU kernels build wherever a compiler is: the skips of tests/kernels/test_cpu_kernels.py and of impl
``cpp`` in the parity tests must not hide a broken build or a missing install step (g++, ninja)."""
from __future__ import annotations

import os
import shutil

import pytest

from kernels import cpu


def test_the_kernels_build_where_a_compiler_is():
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler on this machine: the torch paths serve (test_cpu_kernels.py tests that)")
    assert cpu.available(), cpu._state.get("error")
