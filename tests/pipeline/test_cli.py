"""The command line a new user meets: --version, help with defaults and examples, progress lines."""

import argparse

import pytest

from pipeline.cli import EXAMPLES, main, parser
from pipeline.progress import Progress


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
