"""The commands that run the reference encoder on a built phase: eval-mlm and reference-check (the reference
extra); the phase and the tokenizer are the ones the build used, passed down to reference/."""

import argparse

from manifests.layout import Layout
from pipeline.config import ConfigError
from pipeline.read_commands import require_built
from pipeline.recipes import built_recipe


def without_the_extra(command: str, error: ImportError) -> ConfigError:
    return ConfigError(f"{command} needs the reference extra (pip install -e '.[reference]'): {error}")


def run_eval(args: argparse.Namespace) -> int:
    from stages.tokenize import load_gemma2

    try:
        from reference.checkpoint import CheckpointError
        from reference.evaluate import EvalSettings, evaluate
    except ImportError as error:
        raise without_the_extra(args.command, error) from None
    recipe, phase = built_recipe(args)
    layout = Layout(args.out)
    require_built(layout, phase.id)
    settings = EvalSettings(args.chunks_per_language, args.seed, args.batch_tokens, args.device, threads=args.workers)
    try:
        rows = evaluate(layout, phase, args.checkpoint, load_gemma2(recipe.tokenizers["gemma2"]), settings)
    except CheckpointError as error:  # the user's input: one line and status 2, as any bad option
        raise ConfigError(str(error)) from None
    print(f"{'lang':<16} {'chunks':>7} {'masked':>9} {'loss':>8}")
    for row in rows:
        print(f"{row['lang']:<16} {row['chunks']:>7} {row['masked_tokens']:>9,} {row['loss']:>8.3f}")
    print(f"{phase.id}: {len(rows)} languages at mask rate {phase.mask_rate:g}; written to "
          f"{layout.url_of(Layout.manifest(phase.id, 'mlm_eval'))} (the mlm_eval view)")
    return 0


def run_reference_check(args: argparse.Namespace) -> int:
    from stages.tokenize import Gemma2Tokenizer

    try:
        from reference.check import TrainSettings, train_check
        from reference.checkpoint import CheckpointError
        from reference.model import ATTENTION, CONFIGS
    except ImportError as error:
        raise without_the_extra(args.command, error) from None
    for option, value, known in (("--model", args.model, CONFIGS), ("--backend", args.backend, ATTENTION)):
        if value is not None and value not in known:
            raise ConfigError(f"{option} {value!r}: choose from {', '.join(known)}")
    recipe, phase = built_recipe(args)
    if not args.mds:
        require_built(Layout(args.out), phase.id)
    source = Layout(args.mds) if args.mds else Layout(Layout(args.out).url_of(Layout.shards_dir(phase.id)))
    settings = TrainSettings(model=args.model, steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr,
                             device=args.device, backend=args.backend, compare_padded=args.compare_padded,
                             seed=args.seed, init_from=args.init_from, save=args.save, peak_flops=args.peak_flops,
                             threads=args.workers)
    try:
        fell = train_check(source, phase, Gemma2Tokenizer(recipe.tokenizers["gemma2"]), settings)
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    return 0 if fell else 1
