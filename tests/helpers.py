"""Helpers the tests share: build settings from the default recipe, with one section or value changed."""

from pathlib import Path

from pipeline.build import BuildSettings
from pipeline.config import load_recipe


def settings_for(out: Path | str, phase: int = 1, variant: str | None = None, sources: Path | None = None,
                 overrides: tuple[str, ...] = (), **kwargs: object) -> BuildSettings:
    recipe = load_recipe(sections={"sources": sources} if sources else None, overrides=overrides)
    return BuildSettings(out=str(out), phase=recipe.phases.phase(phase, variant), recipe=recipe, **kwargs)
