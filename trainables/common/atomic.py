"""Shared caches written once, safely when two launches build the same thing at the same moment.

Each writer builds into its own ``<name>.partial-<pid>-<random>`` folder or file and renames it into place;
a writer that loses the race keeps the winner's copy. Readers only ever see complete caches.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def private_name(target: Path) -> Path:
    """A sibling of ``target`` no other process uses."""
    return target.with_name(f"{target.name}.partial-{os.getpid()}-{os.urandom(3).hex()}")


def build_once(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """``target`` if ``complete(target)``; else ``build`` a private copy and move it into place."""
    target = Path(target)
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = private_name(target)
    try:
        build(partial)
        try:
            partial.rename(target)
        except OSError:
            if complete(target):  # another process won the race: keep its copy
                return target
            _remove(target)  # a stale, incomplete copy (a crash before this fix): replace it
            partial.rename(target)
    finally:
        _remove(partial)
    return target


def write_file_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a single file through a private temporary name and an atomic replace."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = private_name(target)
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        _remove(partial)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
