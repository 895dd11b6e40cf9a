"""Which recipe a command runs with: the one its options name (-c, a section's file, --set), or, for a command
that reads a built phase, the one the phase was built with (its `run` row), with the options applied on top."""

import argparse
import json

import pyarrow.parquet as pq

from manifests.layout import Layout
from pipeline.config import ConfigError, Recipe, load_recipe
from pipeline.phases import PhaseConfig
from pipeline.sections import SECTIONS


def recipe_from(args: argparse.Namespace) -> Recipe:
    """The recipe the options name: -c (default configs/recipe.yaml), each section's own file, then --set."""
    sections = {section: getattr(args, section, None) for section in SECTIONS}
    return load_recipe(getattr(args, "recipe", None), sections, getattr(args, "set", []))


def built_recipe(args: argparse.Namespace) -> tuple[Recipe, PhaseConfig]:
    """The recipe and phase of `--phase/--variant` as built under `--out`: the sections its run row records,
    each replaced by its file where one is given, then --set. With -c, or before the phase is built, the
    options' recipe alone."""
    recorded = None if args.recipe else recorded_sections(Layout(args.out), args.phase, args.variant)
    if recorded is None:
        recipe = recipe_from(args)
    else:
        label, sections = recorded
        given = {section: getattr(args, section, None) for section in SECTIONS}
        try:
            recipe = load_recipe(None, sections | {k: v for k, v in given.items() if v is not None}, args.set)
        except ConfigError as error:
            raise ConfigError(f"the recipe recorded in {label} does not load here ({error}): give -c RECIPE or "
                              "the section's file to read the build with another") from None
    return recipe, recipe.phase(args.phase, args.variant)


def recorded_sections(layout: Layout, number: int, variant: str | None) -> tuple[str, dict[str, dict]] | None:
    """(the run table's URL, section -> mapping) of the recipe phase `number` (its `variant`, else its
    default) was built with under `layout`; None when that phase has no run row there."""
    for name in layout.glob(Layout.manifest_glob("run")):
        with layout.open(name) as f:
            rows = pq.read_table(f, columns=["config"]).column("config").to_pylist()
        for row in rows:
            config = json.loads(row)
            phase = config["phase"]
            if phase["number"] == number and (variant or phase["default_variant"]) == phase["variant"]:
                recipe = config["recipe"]
                return layout.url_of(name), {section: recipe[section] for section in SECTIONS}
    return None
