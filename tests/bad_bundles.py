"""Broken and hostile bundles for the tests of the input limits (hardening, issue 16 item 3): documents
nested far past Python's recursion limit, `.npy` headers that lie about their shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import rewrite_manifest

DEEP = 100_000  # levels: far past Python's recursion limit (about 1,000)


def deep_array(levels: int) -> str:
    """A JSON array nested `levels` deep, as text (json.dumps itself would recurse)."""
    return "[" * levels + "]" * levels


def with_member(text: str, member: str) -> str:
    """A JSON object's text with one more member (`"key": value` text) before its closing brace."""
    body = text.rstrip()
    assert body.endswith("}")
    return body[:-1].rstrip() + (", " if body[:-1].strip() != "{" else "") + member + "}"


def put_deep(root: Path, name: str, levels: int = DEEP, line: int = 2) -> None:
    """Add `"x": <array nested levels deep>` to a JSON file, or to line `line` of a JSON-lines file."""
    path = root / name
    member = f'"x": {deep_array(levels)}'
    if name.endswith(".jsonl"):
        lines = path.read_text().splitlines()
        lines[line - 1] = with_member(lines[line - 1], member)
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(with_member(path.read_text(), member))
    if name != "manifest.json":
        rewrite_manifest(root)


def lie_about_shape(root: Path, name: str, shape: tuple[int, ...]) -> None:
    """Rewrite a .npy file's header to declare `shape`, keeping its data (and fix the manifest)."""
    path = root / name
    array = np.load(path)
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": array.dtype.str, "fortran_order": False, "shape": shape}
        )
        fh.write(array.tobytes())
    rewrite_manifest(root)


def npy_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.npy"))


def deep_rules_bundle(good: Path, out: Path, version: int) -> Path:
    root = Path(shutil.copytree(good, out))
    put_deep(root, "rules.json")
    rewrite_manifest(root, version=version)
    return root


def huge_npy_bundle(good: Path, out: Path, version: int) -> Path:
    root = Path(shutil.copytree(good, out))
    lie_about_shape(root, "models/item_embeddings.npy", (2000, 10**9))
    rewrite_manifest(root, version=version)
    return root
