"""What the runtime trusts in a model artifact: paths inside its directory, and types.

A model directory comes from a registry that anyone with write access to it controls, so
everything in it is input, never configuration. Two rules follow.

Paths: every file the loader opens, and every path an ``MLmodel`` names, must resolve
(symlinks followed, ``..`` collapsed) to a place inside the model directory, checked with
:func:`inside` before a byte is read. A pull checks the tree it downloaded the same way
(:func:`check_tree`) before it keeps it.

Types: a skops file names the types it needs, and loading it constructs them (some by
calling them with arguments from the file), so which types may be built is the runtime's
decision alone: scikit-learn's own classes, the few numpy types its estimators hold (dtypes,
scalars, ufuncs) and what ``MODELSHIP_TRUSTED_TYPES`` adds. The ``skops_trusted_types`` an
``MLmodel`` records are what the artifact asks for, and are ignored.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UntrustedArtifact

#: Module name parts never imported or trusted by default, though under sklearn or numpy:
#: test code (importing a conftest runs it), vendored code and build tools.
_NOT_TRUSTED_PARTS = frozenset({"tests", "testing", "_testing", "conftest", "externals",
                                "distutils", "f2py", "_pytesttester"})


def inside(root: Path, relative: str | os.PathLike[str], what: str) -> Path:
    """``root / relative`` resolved, when it stays inside ``root`` (symlinks followed);
    UntrustedArtifact naming ``what`` otherwise. ``relative`` must be relative: an
    absolute path is refused even when it happens to point inside."""
    text = os.fspath(relative)
    if not text or "\x00" in text:
        raise UntrustedArtifact(f"{what} {text!r} is not a file name")
    if os.path.isabs(text) or text.startswith("~"):
        raise UntrustedArtifact(f"{what} {text!r} is an absolute path; it must name a file "
                                "inside the model directory")
    base = root.resolve()
    target = (base / text).resolve()
    if not target.is_relative_to(base):
        raise UntrustedArtifact(f"{what} {text!r} leaves the model directory ({base})")
    return target


def check_tree(root: Path) -> None:
    """Refuse a directory holding a symlink that resolves outside it (UntrustedArtifact).
    Walks without following links, so a link to ``/`` costs nothing."""
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(base):
                rel = path.relative_to(base)
                raise UntrustedArtifact(f"{rel} is a symlink to {os.readlink(path)!r}, "
                                        "outside the model directory")


def _default_trusted(name: str) -> bool:
    """scikit-learn classes (defined in scikit-learn, not its tests or vendored code),
    numpy dtypes and scalar types, and numpy ufuncs: what fitted estimators hold."""
    module, _, attr = name.rpartition(".")
    top = module.split(".")[0]
    if top not in ("sklearn", "numpy") or not attr.isidentifier():
        return False
    if any(part in _NOT_TRUSTED_PARTS for part in module.split(".")):
        return False
    try:  # only modules of installed scikit-learn / numpy are imported here
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    if top == "sklearn":
        return isinstance(obj, type) and obj.__module__.split(".")[0] == "sklearn" \
            and not any(p in _NOT_TRUSTED_PARTS for p in obj.__module__.split("."))
    import numpy as np

    if isinstance(obj, np.ufunc):
        return True
    return isinstance(obj, type) and (obj is np.dtype or issubclass(obj, (np.dtype,
                                                                          np.generic)))


def split_types(untrusted: Iterable[str], configured: Iterable[str]) -> tuple[list[str],
                                                                              list[str]]:
    """Split the types a skops file needs beyond skops' own defaults into (trusted,
    refused): trusted by default (:func:`_default_trusted`) or listed in ``configured``."""
    allowed = set(configured)
    trusted: list[str] = []
    refused: list[str] = []
    for name in untrusted:
        (trusted if name in allowed or _default_trusted(name) else refused).append(name)
    return trusted, refused
