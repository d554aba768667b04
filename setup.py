"""Builds the Cython kernels in core/ (everything else is declared in pyproject.toml).

Compiler flags: -O3 -ffast-math, so float dot products vectorize (without -ffast-math GCC will not
reorder float sums and the kernel runs 4-6x slower). -ffast-math is a compile flag only, never a link
flag: linking with it would pull in crtfastmath.o and change the FP mode of the whole process.
Inputs are validated (no NaN/inf) before they reach a kernel.

EDGEWISE_DEBUG=1 builds with bounds checks, -O0 -g and no fast math, for debugging kernels.
EDGEWISE_NATIVE=1 adds -march=native (faster on the build machine, not portable: never for wheels).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("EDGEWISE_DEBUG") == "1"
NATIVE = os.environ.get("EDGEWISE_NATIVE") == "1"

compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-ffast-math", "-fno-finite-math-only"]
if NATIVE and not DEBUG:
    compile_args.append("-march=native")

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"edgewise.core.{pyx.stem}",
        [str(pyx)],
        extra_compile_args=compile_args,
    )
    for pyx in sorted(Path("core").glob("_*.pyx"))
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, quiet=True))
