"""The command line a new user meets: --version, help with defaults and examples, progress lines, one printer,
and read commands that read a phase with the recipe it was built with."""

import argparse
import json

import pytest

from manifests.layout import Layout
from manifests.printing import print_rows
from manifests.schemas import RUN
from manifests.writer import write_parquet
from pipeline.cli import EXAMPLES, main, parser
from pipeline.config import load_recipe
from pipeline.progress import Progress
from pipeline.recipes import built_recipe
from stages.paths import RECIPE_FILE


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("mmcorpus 0.")


def test_every_subcommand_has_examples_and_every_option_says_its_default():
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == set(EXAMPLES)
    for name, command in commands.choices.items():
        text = command.format_help()
        assert "examples:" in text and f"mmcorpus {name}" in text.split("examples:")[1], name
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert action.help and "default" in command._get_formatter()._get_help_string(action), \
                    f"{name} {action.option_strings[0]}"


def test_progress_lines_carry_rates_and_time_left():
    progress = Progress("curate", 40)
    progress.done, progress.counts = 10, {"docs": 2_000}
    assert progress.line(5.0) == "10/40 tasks (docs 2,000), 2.0 tasks/s, 400 docs/s, 15 s left"
    progress.done = 40
    assert progress.line(20.0).endswith("done in 20.0 s")


@pytest.fixture
def recorded(tmp_path):
    """An output whose phase 1 was built with mask rate 0.25 and a tokenizer of its own: its run row, alone."""
    recipe = load_recipe().to_dict()
    recipe["phases"]["1"]["mask_rate"] = 0.25
    recipe["tokenizers"]["gemma2"]["path"] = "/built/with/tokenizer.model"
    config = {"phase": {"number": 1, "variant": None, "default_variant": None}, "recipe": recipe}
    write_run(tmp_path, config)
    return tmp_path, config


def write_run(out, config: dict) -> str:
    """Phase 1's run row recording `config`; the run table's URL."""
    row = dict(phase="phase1", seed=0, config=json.dumps(config), versions="{}", tokenizer="", tokenizer_sha256="",
               started="", seconds=0.0, git_commit=None)
    write_parquet(Layout(out), Layout.manifest("phase1", "run"), [row], RUN)
    return Layout(out).url_of(Layout.manifest("phase1", "run"))


@pytest.mark.parametrize("command", ["check", "plan", "report", "eval-mlm --checkpoint x", "export-mds dest",
                                     "reference-check"])
def test_read_commands_take_the_recipe_the_phase_was_built_with(recorded, command):
    out, _ = recorded

    def read(*options: str) -> tuple:
        recipe, phase = built_recipe(parser().parse_args([*command.split(), "--out", str(out), *options]))
        return phase.mask_rate, recipe.tokenizers["gemma2"].path

    assert read("--phase", "1") == (0.25, "/built/with/tokenizer.model")
    assert read("--phase", "1", "--set", "phases.1.mask_rate=0.2") == (0.2, "/built/with/tokenizer.model")
    default = load_recipe()
    assert read("--phase", "1", "-c", str(RECIPE_FILE)) == (0.3, default.tokenizers["gemma2"].path)
    assert read("--phase", "2") == (default.phase(2).mask_rate, default.tokenizers["gemma2"].path)  # not built


def test_a_recorded_recipe_that_no_longer_loads_says_how_to_read_it_in_one_line(recorded, capsys):
    out, config = recorded
    config["recipe"]["sources"]["sources"]["fineweb2"]["path"] = "/moved/away"
    table = write_run(out, config)
    assert main(["check", "--phase", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the recipe recorded in {table} does not load here" in err
    assert "/moved/away" in err and "give -c RECIPE" in err


def test_fetch_assets_takes_the_recipe_options_like_any_command(capsys):
    assert main(["fetch-assets", "--set", "nonsense"]) == 2
    assert capsys.readouterr().err.startswith("mmcorpus: error: --set nonsense: expected section.key=value")


def test_one_printer_for_tables_csv_and_json(capsys):
    rows = [("deu_Latn", 12345, 0.123456, None), ("eng_Latn", 5, 2.5, True)]
    print_rows(["lang", "tokens", "p", "flag"], rows)
    assert capsys.readouterr().out.splitlines() == [
        "lang      tokens       p  flag", "--------  ------  ------  ----",
        "deu_Latn   12345  0.1235", "eng_Latn       5     2.5  True"]
    print_rows(["lang", "tokens", "p", "flag"], rows, "csv")
    assert capsys.readouterr().out == "lang,tokens,p,flag\ndeu_Latn,12345,0.123456,\neng_Latn,5,2.5,True\n"
    print_rows(["lang", "tokens", "p", "flag"], rows, "json")
    assert json.loads(capsys.readouterr().out)[1] == {"lang": "eng_Latn", "tokens": 5, "p": 2.5, "flag": True}
