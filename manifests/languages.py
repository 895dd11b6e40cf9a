"""A phase's languages: the recipe's, those with data and those with none, counted one way for every place that
says it (`plan`, the build's summary, both data cards): "22 of 60 languages + code have data; 38 have none: ...".

Labels are FineWeb2's `lang_Script` (`deu_Latn`); code counts once, as `code`, whatever `code_<language>` labels
its data carries. The recipe's languages come as labels (stages/languages.py turns mmBERT's ISO 639-3 codes into
their usual label, and the build records them in the run's `phase.language_labels`).
"""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

CODE = "code"  # the language set entry that admits every `code_<language>` label


def base_language(label: str) -> str:
    """`deu_Latn` -> `deu`; every `code_<language>` -> `code` (how mmBERT's counts name languages)."""
    return CODE if label.startswith(f"{CODE}_") else label.split("_", 1)[0]


@dataclass(frozen=True)
class Coverage:
    """The recipe's languages of a phase against the labels with tokens available to it."""

    recipe: tuple[str, ...] | None  # None: a build from before the run recorded them
    with_data: tuple[str, ...]

    @property
    def missing(self) -> list[str]:
        """The recipe's languages without a token of data, as labels."""
        present = {base_language(label) for label in self.with_data}
        return [label for label in self.recipe or () if base_language(label) not in present]

    def count(self) -> str:
        """`22 of 60 languages + code`: the recipe's languages (code apart) that have data."""
        present = {base_language(label) for label in self.with_data}
        code = " + code" if CODE in present else ""
        if self.recipe is None:
            return f"{len(present - {CODE}):,} languages{code}"
        languages = [label for label in self.recipe if base_language(label) != CODE]
        covered = sum(base_language(label) in present for label in languages)
        return f"{covered:,} of {len(languages):,} languages{code if CODE in self.recipe else ''}"

    def sentence(self, limit: int | None = None) -> str:
        """`22 of 60 languages + code have data; 38 have none: afr_Latn, ...`; a terminal names `limit` at most
        (phase 3's 1,833 would bury the rest)."""
        if self.recipe is None:
            return (f"{self.count()} have data (this build did not record the recipe's languages: build it again "
                    "to list those with none)")
        if not (missing := self.missing):
            return f"{self.count()} have data: all of them"
        named = missing if limit is None or len(missing) <= limit else [*missing[:limit],
                                                                          f"and {len(missing) - limit:,} more"]
        return f"{self.count()} have data; {len(missing):,} {'has' if len(missing) == 1 else 'have'} none: " + \
            ", ".join(named)


TERMINAL_LIMIT = 60  # languages without data a terminal line names (the cards name them all)


def coverage(recipe: list[str] | None, available: dict[str, float]) -> Coverage:
    """From the recipe's labels and the tokens available per label (labels with none do not count as data)."""
    with_data = sorted(label for label, tokens in available.items() if tokens and tokens > 0)
    return Coverage(tuple(sorted(recipe, key=_order)) if recipe is not None else None, tuple(with_data))


def phase_coverage(con: "duckdb.DuckDBPyConnection", phase_id: str) -> Coverage:
    """A built phase's, from the catalog's `run` (the recipe's labels) and `mixture` (tokens available)."""
    recorded = con.execute("SELECT json_extract(config, '$.phase.language_labels') FROM run WHERE phase = ?",
                           [phase_id]).fetchone()
    available = dict(con.execute("SELECT lang, sum(available_tokens) FROM mixture WHERE phase = ? GROUP BY 1",
                                 [phase_id]).fetchall())
    return coverage(json.loads(recorded[0]) if recorded and recorded[0] else None, available)


def _order(label: str) -> tuple[bool, str]:
    return base_language(label) == CODE, label  # code last
