"""Builds the Cython modules (everything else is declared in pyproject.toml).

Which modules: every `_*.pyx` in the folder of a package of pyproject.toml's package-dir, as
`<package>.<stem>`: the kernels in core/ (edgewise.core._scoring, ...) and the bench-only probes in bench/
(edgewise.bench._probes).

Package-shaped tree: the repository maps folders to packages (core/ -> edgewise.core), which Cython
cannot follow: it looks for a module's `.pxd` (its own and the ones it cimports) under
`<root>/edgewise/core/`. So the sources are staged as symlinks in build/cython/, shaped like the
installed package (edgewise/__init__.py, edgewise/core/{__init__.py,_*.pyx,_*.pxd,_*.h}, ...), and
cythonized there: each `.pxd` is paired with its `.pyx`, so the functions it declares are exported for
`cimport edgewise.core._scoring` (the module's `__pyx_capi__`), and the generated C sits next to the
headers it includes (core/_simd.h). The generated C stays in build/; the `.pyx`, `.pxd`, `.pyi` and `.h`
files ship in the package (package-data), so an installed package can be cimported too.

Compiler flags: -O3 -ffast-math, so float dot products vectorize (without -ffast-math GCC will not
reorder float sums and the kernel runs 4-6x slower). -ffast-math is a compile flag only, never a link
flag: linking with it would pull in crtfastmath.o and change the FP mode of the whole process.
Inputs are validated (no NaN/inf) before they reach a kernel.

EDGEWISE_DEBUG=1 builds with bounds checks, -O0 -g and no fast math, for debugging kernels.
EDGEWISE_NATIVE=1 adds -march=native (faster on the build machine, not portable: never for wheels).
"""

import os
import tomllib
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

ROOT = Path(__file__).resolve().parent
# Relative to the project root, as setuptools wants extension sources. One tree per set of directives:
# cythonize regenerates C only when a source is newer, so a debug build must not reuse the release C.
STAGE = Path("build", "cython-debug" if DEBUG else "cython")
STAGED = ("__init__.py", "_*.pyx", "_*.pxd", "_*.h")

with open(ROOT / "pyproject.toml", "rb") as f:
    PACKAGE_DIRS: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def stage(package: str, source: Path) -> Path:
    """Symlink the package's __init__.py and Cython sources into STAGE/<package path>/; returns it."""
    target = STAGE.joinpath(*package.split("."))
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():  # renamed or deleted sources must not linger; generated C stays
        if old.is_symlink():
            old.unlink()
    for pattern in STAGED:
        for path in sorted(source.glob(pattern)):
            (target / path.name).symlink_to(path.resolve())
    return target


def extensions() -> list[Extension]:
    built = []
    for package, folder in sorted(PACKAGE_DIRS.items()):
        source = ROOT / folder
        if not any(source.glob("_*.pyx")):
            continue
        # Every enclosing package is staged too, so Cython sees edgewise/ and edgewise/core/ as packages.
        parts = package.split(".")
        for depth in range(1, len(parts)):
            outer = ".".join(parts[:depth])
            stage(outer, ROOT / PACKAGE_DIRS[outer])
        staged = stage(package, source)
        for pyx in sorted(staged.glob("_*.pyx")):
            built.append(
                Extension(
                    f"{package}.{pyx.stem}",
                    [str(pyx)],
                    depends=[str(h) for h in sorted(staged.glob("_*.h"))],
                    extra_compile_args=compile_args,
                )
            )
    return built


setup(ext_modules=cythonize(extensions(), compiler_directives=directives, quiet=True))
