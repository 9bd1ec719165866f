"""What a test needs of the machine: under CI=true a missing part is a FAILURE, elsewhere a
skip (one place for that rule; tests/conftest.py applies the ``needs_root`` mark).

* ``@needs_root`` / ``@needs_root("why")``: a mark for tests (or ``pytestmark``) that need
  root (overlayfs, mounts, runc, containerd's own directories);
* :func:`require_root` / :func:`require_binary` / :func:`require_module`: the same, called
  inside a test or fixture;
* :func:`missing`: any other absent part.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = [
    "IN_CI",
    "missing",
    "needs_root",
    "require_binary",
    "require_module",
    "require_root",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Mark a test that needs root; the reason (optional) says what for.
needs_root = pytest.mark.needs_root


def missing(msg: str) -> NoReturn:
    """A part this test needs is absent: fail under CI=true, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{msg} (CI is set: this test must run)", pytrace=False)
    pytest.skip(msg)


def require_root(why: str = "overlayfs, mounts") -> None:
    if os.geteuid() != 0:
        missing(f"needs root ({why})")


def require_binary(name: str, package: str) -> str:
    """Path of ``name`` (also found in the sbin directories off a root PATH)."""
    path = shutil.which(name)
    if path is not None:
        return path
    for d in ("/usr/sbin", "/sbin", "/usr/bin"):
        cand = Path(d) / name
        if cand.exists():
            return str(cand)
    missing(f"{name} not found: install Debian's {package} (apt-get install {package})")


def require_module(name: str, extra: str = "test") -> ModuleType:
    """Import ``name``, a Python package of cargohold's ``[test]`` extras."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python package {name} is missing: pip install -e '.[{extra}]'")


def apply_needs_root(item: pytest.Item) -> None:
    """conftest's hook: a test marked ``needs_root`` fails (CI) or skips without root."""
    mark = item.get_closest_marker("needs_root")
    if mark is not None:
        why = mark.args[0] if mark.args else mark.kwargs.get("reason", "overlayfs, mounts")
        require_root(str(why))
