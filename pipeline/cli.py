"""`mmcorpus`: build a phase, query and check its manifest, show the recipe, fetch the tokenizer assets.

Exit codes: 0 success, 1 the run failed, 2 bad usage or configuration (one line naming the file or option) or
nothing built to read, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). An interrupted build resumes when run
again. A command that reads a built phase reads it with the recipe the phase was built with, unless -c or --set
say otherwise.
"""

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pipeline import commands, encoder_commands, read_commands
from pipeline.config import ConfigError
from pipeline.option_types import byte_size, number, phase_number, positive_int, seed, token_count
from pipeline.sections import SECTIONS
from pipeline.supervisor import announce_end
from stages.settings import Range

log = logging.getLogger("mmcorpus")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mmcorpus: error: {message}; see {self.prog} --help\n")


class CommandParser(Parser):
    """A command's parser: an argument it does not know is its error (see mmcorpus build --help), not the root's."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless it says it already or has none worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default in (None, False, [], argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "build": """examples:
  mmcorpus build --phase 1                                   # the bundled samples into out/
  mmcorpus build --phase 2 --sources my-sources.yaml --out /data/mmcorpus --workers 16
  mmcorpus build --phase 1 --set quality.fixed.min_doc_words=100 --dry-run
  mmcorpus build --phase 1 --ray-address http://head:8265 --out s3://bucket/mmcorpus""",
    "config": """examples:
  mmcorpus config show --set phases.1.temperature=0.5
  mmcorpus config fields | grep quality""",
    "sources": """examples:
  mmcorpus sources                                           # the bundled samples
  mmcorpus sources --sources my-sources.yaml                 # your own data: files, a sample, the mapping""",
    "query": """examples:
  mmcorpus query --list
  mmcorpus query --describe mixture
  mmcorpus query rejects_by_reason
  mmcorpus query --out /data/mmcorpus --format csv \\
      "SELECT lang, sum(tokens) FROM mixture WHERE phase = 'phase1' GROUP BY 1\"""",
    "why": "examples:\n  mmcorpus why fineweb2/<urn:uuid:...>\n  mmcorpus query \"SELECT id FROM rejects LIMIT 5\"   "
           "# ids to ask about",
    "check": "examples:\n  mmcorpus check --phase 1\n  mmcorpus check --phase 3 --variant eng --out /data/mmcorpus",
    "plan": """examples:
  mmcorpus plan --phase 1                                    # from the pool under out/
  mmcorpus plan --phase 1 --scale full --counts configs/mmbert-language-counts.csv --cost
  mmcorpus plan --phase 1 --sources my-sources.yaml --set phases.1.other_sources.mycorpus=50""",
    "export-mds": "examples:\n  mmcorpus export-mds --phase 1 out/phase1-mds\n  mmcorpus export-mds --phase 2 "
                  "--compression zstd --out s3://bucket/mmcorpus s3://bucket/mds/phase2",
    "report": "examples:\n  mmcorpus report --phase 1             # out/phase1/report/index.html\n"
              "  mmcorpus report --phase 1 --tokenizers my-tokenizers.yaml   # not the build's own",
    "eval-mlm": "examples:\n  mmcorpus eval-mlm --phase 2 --checkpoint ~/mmBERT-base --chunks-per-language 16",
    "reference-check": "examples:\n  mmcorpus reference-check --phase 1    # the loss must fall\n"
                       "  mmcorpus reference-check --phase 2 --model base --init-from ~/mmBERT-base --steps 50 "
                       "--save ckpt/\n  mmcorpus reference-check --phase 1 --mds /data/mmbert/phase1/train",
    "fetch-assets": "examples:\n  mmcorpus fetch-assets                 # what `make setup` runs",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mmcorpus")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="mmcorpus", description=__doc__, formatter_class=HelpFormatter)
    root.add_argument("--version", action="version", version=f"mmcorpus {version()}")
    root.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the resolved recipe at the "
                                                                     "start of a build")
    subcommands = root.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = subcommands.add_parser(name, help=help, formatter_class=HelpFormatter, epilog=EXAMPLES[name])
        # -v after the command too (`mmcorpus build --phase 1 -v`); SUPPRESS keeps the root's value when not given
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as mmcorpus -v")
        return parser

    build = command("build", "curate the sources into the pool, then mix and shard a phase")
    add_phase_arguments(build)
    add_recipe_arguments(build)
    add_out_argument(build)
    build.add_argument("--workers", type=positive_int, default=2, help="CPUs of the embedded Ray (default: 2)")
    build.add_argument("--seed", type=seed, default=0, help="seed for sampling and shuffling (default: 0)")
    build.add_argument("--task-memory", type=byte_size, help="memory each task may hold, e.g. 2GiB: Ray places "
                                                             "tasks by it and stages spill or partition within it "
                                                             "(default: the smallest node's memory per CPU, at most "
                                                             "8 GiB)")
    build.add_argument("--retries", type=number(int, Range(ge=0)), default=1,
                       help="retries of a failing task before its input file is quarantined (default: 1)")
    build.add_argument("--keep-rejected-text", action="store_true",
                       help="rejected documents keep their text in the `rejects` view (more disk)")
    build.add_argument("--budget", type=token_count,
                       help="phase token budget: 2.3T, 600B, 50M or 1e9 (default: the pool's eligible tokens)")
    build.add_argument("--ray-address", help="a Ray cluster: http://head:8265 submits the build as a Ray job; "
                                             "ray://... or host:port joins it (default: $RAY_ADDRESS, else embedded)")
    build.add_argument("--dry-run", action="store_true", help="check the recipe and the inputs, print the resolved "
                                                              "recipe and stop")

    config = command("config", "the resolved recipe (show) or every setting with its help (fields)")
    config.add_argument("action", choices=["show", "fields"], help="show: the resolved recipe as YAML; fields: "
                                                                   "every setting with its type, default and help")
    add_recipe_arguments(config)

    sources = command("sources", "each source of the recipe: its reader, the files it matches, its first document "
                                 "and what the field mapping did")
    add_recipe_arguments(sources)

    query = command("query", "run read-only SQL on an output's catalog views")
    query.add_argument("sql", nargs="?", help="SQL, a view's name (all its rows) or a named query's")
    query.add_argument("--list", action="store_true", help="list the views and named queries, with their columns")
    query.add_argument("--describe", metavar="VIEW", help="one view's columns and types")
    add_out_argument(query)
    add_format_argument(query)

    why = command("why", "a document's whole path: where it was read, each stage's verdict, its dedup cluster, "
                         "the chunks and shards it landed in")
    why.add_argument("id", help="the document's id, as in the shards' doc_id and the rejects view")
    add_out_argument(why)
    add_format_argument(why)

    check = command("check", "verify a built phase: sha256s, row/token counts, stage counts")
    add_built_phase_arguments(check)

    plan = command("plan", "print a phase's targets per source and language; writes nothing")
    add_built_phase_arguments(plan)
    plan.add_argument("--counts", type=Path, help="CSV of available tokens: lang,tokens[,source], or mmBERT's "
                                                  "counts file (default: the pool under --out)")
    plan.add_argument("--scale", choices=["sample", "full"], default="sample",
                      help="full: the recipe's budget (2.3T / 600B / 100B); sample: what the counts hold")
    plan.add_argument("--budget", type=token_count, help="token budget: 2.3T, 600B, 50M or 1e9 (overrides --scale)")
    add_format_argument(plan)
    plan.add_argument("--cost", action="store_true", help="also estimate the full recipe's core-hours and wall time "
                                                          "from the rates `make bench` measured")
    plan.add_argument("--cost-workers", type=positive_int, default=64, help="Ray workers for the wall-time estimate")
    plan.add_argument("--rates", type=Path, help="benchmark results (default: bench/results.json)")

    export = command("export-mds", "write a built phase's shards as MosaicML MDS, laid out as mmBERT's trainer "
                                   "reads its data")
    add_built_phase_arguments(export)
    export.add_argument("--compression", choices=["zstd"], help="also write each MDS file compressed (the raw ones, "
                                                                "which mmBERT's trainer reads, are always written)")
    export.add_argument("dest", help="destination folder or URL: a folder per source "
                                     "(<source>-tokenized-chunked-<seq>-<min>-<skip>-backfill-nodups/) and a root "
                                     "index.json over them")

    report = command("report", "write a built phase's data card: <out>/<phase>/report/")
    add_built_phase_arguments(report)

    evaluate = command("eval-mlm", "a checkpoint's MLM loss per language on a built phase, into its manifest and "
                                   "data card (needs the reference extra)")
    add_built_phase_arguments(evaluate)
    evaluate.add_argument("--checkpoint", type=Path, required=True,
                          help="Hugging Face ModernBERT/mmBERT folder (config.json + model.safetensors)")
    evaluate.add_argument("--chunks-per-language", type=positive_int, default=64, help="sample size (default: 64)")
    evaluate.add_argument("--batch-tokens", type=positive_int, help="tokens per batch (default: the phase's seq_len)")
    evaluate.add_argument("--seed", type=seed, default=0, help="chooses the sample and the masks (default: 0)")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    evaluate.add_argument("--workers", type=positive_int, default=2, help="CPU threads (default: 2)")

    train = command("reference-check", "train the reference encoder briefly on a built phase (or an MDS export); "
                                       "fails unless the MLM loss falls clearly (needs the reference extra)")
    add_built_phase_arguments(train)
    train.add_argument("--mds", help="train on this shards folder or `export-mds` folder, a path or URL, instead "
                                     "(default: <out>/<phase>/shards)")
    train.add_argument("--model", default="tiny", help="encoder size: tiny, small or base (with --init-from, the "
                                                       "checkpoint's)")
    train.add_argument("--steps", type=positive_int, default=60, help="training steps (default: 60)")
    train.add_argument("--batch-tokens", type=positive_int, help="tokens per batch, longer chunks cut to fit "
                                                                 "(default: the phase's seq_len, 512 at most on CPU)")
    train.add_argument("--workers", type=positive_int, default=2, help="CPU threads (default: 2)")
    train.add_argument("--lr", type=number(float, Range(gt=0)), default=3e-3, help="peak learning rate")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--backend", help="attention backend: eager, sdpa or flash_attn (default: the fastest the "
                                         "device has)")
    train.add_argument("--compare-padded", action="store_true", help="also time the same batches padded to their "
                                                                     "longest sequence")
    train.add_argument("--seed", type=seed, default=0, help="chooses the initial weights and the masks")
    train.add_argument("--init-from", type=Path, help="start from a Hugging Face ModernBERT/mmBERT checkpoint folder")
    train.add_argument("--save", type=Path, help="write the trained weights there as a Hugging Face checkpoint")
    train.add_argument("--peak-flops", type=number(float, Range(gt=0)),
                       help="the device's peak FLOP/s, for MFU on a GPU (default: an H100's dense bf16)")

    fetch = command("fetch-assets", "download the tokenizer and LID model files into the cache (set-up)")
    add_recipe_arguments(fetch)
    return root


def add_phase_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--phase", type=phase_number, required=True, help="phase number in the phases YAML")
    command.add_argument("--variant", help="phase variant (phase 3: all, cont, eng; default: the phase's own)")
    command.add_argument("--phases", type=Path, help="phases YAML (default: the recipe's)")


def add_recipe_arguments(command: argparse.ArgumentParser, default: str = "configs/recipe.yaml") -> None:
    command.add_argument("-c", "--recipe", type=Path, help=f"recipe YAML: every section, inline or by file "
                                                            f"(default: {default})")
    for section in SECTIONS:
        if section != "phases" or not any(a.dest == "phases" for a in command._actions):
            command.add_argument(f"--{section}", type=Path, help=f"{section} YAML (replaces the recipe's)")
    command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="change one setting, e.g. --set quality.fixed.min_doc_words=100 (repeatable)")


def add_built_phase_arguments(command: argparse.ArgumentParser) -> None:
    """A built phase under --out, read with the recipe it was built with (its run row) unless told otherwise."""
    add_phase_arguments(command)
    add_recipe_arguments(command, default="the one the phase was built with, else configs/recipe.yaml")
    add_out_argument(command)


def add_out_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", default="out", help="output folder or fsspec URL such as s3://bucket/prefix "
                                                      "(default: out)")


def add_format_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mmcorpus query ... | head` ends quietly
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs: dict[str, Callable[[], int]] = {
        "build": lambda: commands.run_build(args, argv), "config": lambda: commands.run_config(args),
        "sources": lambda: commands.run_sources(args), "plan": lambda: commands.run_plan(args),
        "fetch-assets": lambda: commands.run_fetch_assets(args),
        "query": lambda: read_commands.run_query(args), "why": lambda: read_commands.run_why(args),
        "check": lambda: read_commands.run_check(args), "export-mds": lambda: read_commands.run_export(args),
        "report": lambda: read_commands.run_report(args),
        "eval-mlm": lambda: encoder_commands.run_eval(args),
        "reference-check": lambda: encoder_commands.run_reference_check(args),
    }
    try:
        return run_command(args.command, runs[args.command])
    finally:
        announce_end()


def run_command(name: str, run: Callable[[], int]) -> int:
    """The command's exit status; every error one line on stderr."""
    from manifests.layout import TreeLocked
    from pipeline.session import Terminated

    try:
        return run()
    except (ConfigError, TreeLocked) as error:
        print(f"mmcorpus: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmcorpus: {name} interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mmcorpus: {name} terminated; run the same command again to resume", file=sys.stderr)
        return 143
    except Exception as error:  # noqa: BLE001 - one clear line, exit 1; the log above has the details
        log.debug("failure", exc_info=True)
        print(f"mmcorpus: {name} failed: {error_text(error)}", file=sys.stderr)
        return 1


def error_text(error: BaseException) -> str:
    """One line for the user: the message without `[Errno 2]` or a class name (the class only when the message
    is empty or a bare key)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__.lower().replace('error', ' error').strip()} {text}".strip()
    return text


if __name__ == "__main__":
    sys.exit(main())
