"""The kernels' `.pxd` declarations are real: the built modules export what their `.pxd` declares, and a
Cython module compiled here against the installed package cimports the kernels and calls them.

setup.py cythonizes from a tree shaped like the package (edgewise/core/_scoring.pyx beside
_scoring.pxd), so Cython pairs each `.pxd` with its `.pyx` and puts the declared functions in the module's
C-API table, `__pyx_capi__`, which a `cimport` reads when the importing module starts. The `.pxd` files
ship next to the compiled modules (package data); the include tree built here maps edgewise/core to the
installed package's folder, so the test works for an installed wheel and an editable install alike.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgewise.core import _hashing, _scoring, bucketing, scoring

CORE = Path(scoring.__file__).resolve().parent

# The `cdef` functions a .pxd declares: `cdef <type> <name>(`, at the start of a line.
_DECLARED = re.compile(r"^cdef \w+ (\w+)\(", re.MULTILINE)


@pytest.mark.parametrize("module", [_scoring, _hashing], ids=["_scoring", "_hashing"])
def test_every_pxd_function_is_exported(module: ModuleType) -> None:
    stem = module.__name__.rsplit(".", 1)[1]
    declared = set(_DECLARED.findall((CORE / f"{stem}.pxd").read_text()))
    assert declared, f"no cdef function found in {stem}.pxd"
    assert set(vars(module)["__pyx_capi__"]) == declared


USER_PYX = """\
from libc.stdint cimport int32_t, uint8_t, uint32_t

from edgewise.core._hashing cimport murmur3_32_kernel
from edgewise.core._scoring cimport topk_dot_kernel


def topk_dot(const float[:, ::1] matrix, const float[::1] query, const uint8_t[::1] mask, Py_ssize_t k,
             int32_t[::1] out_idx, float[::1] out_scores):
    cdef Py_ssize_t written
    with nogil:
        written = topk_dot_kernel(matrix, query, mask, k, out_idx, out_scores)
    return written


def murmur3_32(bytes data, uint32_t seed):
    cdef const unsigned char* p = data
    return murmur3_32_kernel(p, len(data), seed)
"""

USER_SETUP = """\
from Cython.Build import cythonize
from setuptools import Extension, setup

extension = Extension("kernel_user", ["kernel_user.pyx"], extra_compile_args=["-O0"])
setup(ext_modules=cythonize([extension], include_path=["include"], language_level=3, quiet=True))
"""


@pytest.fixture(scope="module")
def kernel_user(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """A Cython module that cimports the kernels from the installed package, compiled and imported."""
    pytest.importorskip("Cython")
    pytest.importorskip("setuptools")  # builds the extension
    root = tmp_path_factory.mktemp("kernel_user")
    include = root / "include" / "edgewise"
    include.mkdir(parents=True)
    (include / "core").symlink_to(CORE, target_is_directory=True)
    (root / "kernel_user.pyx").write_text(USER_PYX)
    (root / "setup.py").write_text(USER_SETUP)
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, textwrap.shorten(done.stdout + done.stderr, 4000)
    (built,) = root.glob("kernel_user.*.so")
    spec = importlib.util.spec_from_file_location("kernel_user", built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports the kernels from edgewise.core._scoring's __pyx_capi__
    return module


def test_a_cimported_kernel_gives_the_entry_points_result(kernel_user: ModuleType) -> None:
    rng = np.random.default_rng(5)
    matrix = rng.integers(-3, 4, size=(500, 16)).astype(np.float32)
    query = rng.integers(-3, 4, size=16).astype(np.float32)
    mask = (rng.random(500) < 0.7).astype(np.uint8)
    got_idx, got_scores = np.full(10, -7, dtype=np.int32), np.full(10, -7.0, dtype=np.float32)
    want_idx, want_scores = np.empty(10, dtype=np.int32), np.empty(10, dtype=np.float32)
    assert kernel_user.topk_dot(matrix, query, mask, 10, got_idx, got_scores) == 10
    assert scoring.topk_dot_into(matrix, query, mask, 10, want_idx, want_scores) == 10
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_array_equal(got_scores, want_scores)


def test_a_cimported_hash_gives_murmur3(kernel_user: ModuleType) -> None:
    for data, seed in [(b"", 1), (b"Hello, world!", 1234), (bytes(range(256)) * 3, 7)]:
        assert kernel_user.murmur3_32(data, seed) == bucketing.murmur3_32_reference(data, seed)
