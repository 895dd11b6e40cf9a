"""The commands that start from a recipe: build, config, sources, plan and fetch-assets."""

import argparse
import logging
from pathlib import Path

import yaml

from manifests.layout import Layout
from manifests.printing import print_rows
from pipeline.config import ConfigError
from pipeline.recipes import built_recipe, recipe_from
from pipeline.supervisor import run_watched, supervised
from stages.paths import BENCH_RESULTS, SAMPLES_DIR

log = logging.getLogger("mmcorpus")


def run_build(args: argparse.Namespace, argv: list[str]) -> int:
    from manifests.summary import build_summary
    from pipeline.build import BuildSettings, build
    from pipeline.cluster import is_job_address, submit_build
    from pipeline.inputs import check_inputs
    from stages.sources import create_reader

    recipe = recipe_from(args)
    phase = recipe.phase(args.phase, args.variant)
    settings = BuildSettings(out=args.out, phase=phase, recipe=recipe, seed=args.seed, workers=args.workers,
                             budget_tokens=args.budget, ray_address=args.ray_address, retries=args.retries,
                             task_memory=args.task_memory, keep_rejected_text=args.keep_rejected_text)
    if args.dry_run:
        check_inputs(recipe)
        for name, options in recipe.sources.sources.items():
            files = create_reader(name, options, recipe.tokenizers).list_files()
            print(f"{name}: {len(files)} input file(s) under {options.path}")
        for role, spec in recipe.assets().items():
            print(f"{role}: {spec.check() or spec.path}")
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
        return 0
    if not supervised() and not is_job_address(args.ray_address):
        return run_watched(argv, "build")  # the child checks the recipe again and says the lines below, once
    log.info("recipe: %s", ", ".join(f"{section} {file}" for section, file in recipe.files.items()))
    if all(Path(options.path).resolve().is_relative_to(SAMPLES_DIR) for options in recipe.sources.sources.values()):
        log.warning("building the bundled samples (%s): give --sources YAML for your own data",
                    recipe.files.get("sources", "configs/sources.yaml"))
    log.debug("resolved recipe:\n%s", yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    if is_job_address(args.ray_address):
        return submit_build(args.ray_address, job_arguments(argv, args))
    layout = Layout(args.out)
    info = build(settings, layout)  # which lists the tree once its tasks are done, for the summary too
    print(build_summary(layout, phase.id, info["seconds"], info["seed"], args.out))
    return 0


def job_arguments(argv: list[str], args: argparse.Namespace) -> list[str]:
    """The build's own arguments for the job: without --ray-address, with a local --out made absolute (the job
    runs in a copy of the project, so a relative --out would land there)."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--ray-address", "--out"):
            skip = True
            continue
        if not arg.startswith(("--ray-address=", "--out=")):
            kept.append(arg)
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    return [*kept, "--out", out]


def run_config(args: argparse.Namespace) -> int:
    if args.action == "fields":
        from pipeline.sections import SECTIONS
        from stages.settings import describe

        for section in SECTIONS.values():
            for prefix, cls in section.documented().items():
                for key, kind, default, text in describe(cls, prefix + "."):
                    print(f"{key}: {kind} = {default}  # {text}")
        return 0
    recipe = recipe_from(args)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), end="")
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from pipeline.inputs import describe, inspect_source

    recipe = recipe_from(args)
    for name, options in recipe.sources.sources.items():
        print("\n".join(describe(inspect_source(name, options, recipe))), end="\n\n")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from manifests.languages import TERMINAL_LIMIT, coverage
    from pipeline.mixing import plan_rows, pool_files, read_counts, summarize_pool
    from stages.languages import usual_label

    recipe, phase = built_recipe(args)
    layout = Layout(args.out)
    if args.cost:  # before the table: a missing benchmark is one line, not a table and then an error
        from pipeline.cost import cost_section, measured_rates

        rates_file = args.rates or BENCH_RESULTS
        rates = measured_rates(rates_file, required=args.rates is not None)  # the default's absence: a line below
    if args.counts:
        available = read_counts(args.counts, phase)
    elif files := pool_files(layout):
        available = summarize_pool(layout, phase, files).available
    else:
        raise ConfigError(f"no --counts and no pool under {layout.url}: build first or give a counts CSV")
    if not available:
        raise ConfigError(f"no available tokens for the phase-{phase.number} languages")
    budget = args.budget or (phase.budget_tokens if args.scale == "full" else float(sum(available.values())))
    rows = sorted(plan_rows(phase, available, budget), key=lambda r: (r.source, -r.target_tokens))
    print_rows(["source", "lang", "available", "p", "target", "epochs", "capped"],
               [(r.source, usual_label(r.lang), r.available_tokens, r.p, r.target_tokens, r.epochs, r.capped)
                for r in rows], args.format)
    if args.format != "table":
        return 0
    tokens: dict[str, int] = {}
    for (_, lang), count in available.items():
        tokens[usual_label(lang)] = tokens.get(usual_label(lang), 0) + count
    languages = coverage(sorted(map(usual_label, phase.language_codes)), tokens)
    repeated = sorted(rows, key=lambda r: -r.epochs)[:5]
    print(f"\n{phase.id} ({phase.name}): budget {budget:,.0f} tokens, target {sum(r.target_tokens for r in rows):,} "
          f"tokens, {sum(r.capped for r in rows)} capped at {phase.max_epochs:g} epochs, tau {phase.temperature}")
    print(f"languages: {languages.sentence(TERMINAL_LIMIT)}")
    print("most repeated: " + ", ".join(f"{usual_label(r.lang)} {r.epochs:.2f}x" for r in repeated))
    if args.cost:
        print("\n" + cost_section(rates, rates_file, args.cost_workers, recipe.phases))
    return 0


def run_fetch_assets(args: argparse.Namespace) -> int:
    from pipeline.assets import fetch_assets

    fetch_assets(recipe_from(args))
    return 0
