"""Helpers the tests share: build settings from the default recipe, with one section or value changed; an input
edited behind a rebuild's back."""

import os
from pathlib import Path

from pipeline.build import BuildSettings
from pipeline.config import load_recipe


def settings_for(out: Path | str, phase: int = 1, variant: str | None = None, sources: Path | None = None,
                 overrides: tuple[str, ...] = (), **kwargs: object) -> BuildSettings:
    recipe = load_recipe(sections={"sources": sources} if sources else None, overrides=overrides)
    return BuildSettings(out=str(out), phase=recipe.phases.phase(phase, variant), recipe=recipe, **kwargs)


def edit_keeping_size_and_mtime(path: Path, old: bytes, new: bytes) -> None:
    """Replace the first `old` with `new` (as long) and put the modification time back: a change that size and
    mtime cannot see."""
    assert len(old) == len(new)
    data, stat = path.read_bytes(), path.stat()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
