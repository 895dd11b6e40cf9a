"""Language labels in FineWeb2's `lang_Script` form, and the mappings from other label styles."""

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from manifests.languages import CODE, base_language
from stages.paths import COUNTS_FILE, FINEWEB2_THRESHOLDS, LANGUAGES_FILE
from stages.settings import setting

# A label is also a folder name under pool/: nothing else may pass (no `..`, no `/`).
LABEL = re.compile(r"(?:[a-z]{2,3}_[A-Z][a-z]{3}|code_[a-z0-9][a-z0-9+#._-]{0,40})")


@cache
def _language_rows(path: Path = LANGUAGES_FILE) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@cache
def short_code_labels() -> dict[str, str]:
    """Wikipedia / ISO 639-1 code (`de`, `als`) -> `deu_Latn`, `gsw_Latn`, from configs/languages.csv."""
    return {row["code"]: f"{row['lang']}_{row['script']}" for row in _language_rows()}


def other_scripts() -> dict[str, frozenset[str]]:
    """ISO 639-3 code -> the scripts it is also written in besides its usual one (`srp` -> {Latn})."""
    rows = _language_rows()
    return {row["lang"]: frozenset(row["other_scripts"].split("|")) for row in rows if row["other_scripts"]}


@cache
def iso639_3_labels() -> dict[str, str]:
    """ISO 639-3 code (`deu`) -> its usual label (`deu_Latn`), from configs/languages.csv."""
    labels: dict[str, str] = {}
    for row in _language_rows():
        labels.setdefault(row["lang"], f"{row['lang']}_{row['script']}")
    return labels


def label_of(code: str) -> str | None:
    """A source's own language code as a label: `deu_Latn` as it is, `de` or `deu` through configs/languages.csv;
    None for anything else."""
    code = code.strip()
    if valid_label(code):
        return code
    lower = code.lower()
    return short_code_labels().get(lower) or iso639_3_labels().get(lower)


@cache
def fineweb2_labels(path: Path = FINEWEB2_THRESHOLDS) -> dict[str, str]:
    """ISO 639-3 code -> FineWeb2's label for it (`aai` -> `aai_Latn`; the first of the file's when it has
    several scripts), from the keys of FineWeb2's thresholds (read line by line: its values are large)."""
    labels: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            if found := re.match(r"([a-z]{2,3})_[A-Z][a-z]{3}(?=:)", line):
                labels.setdefault(found[1], found[0])
    return labels


def usual_label(code: str) -> str:
    """A language of mmBERT's counts (`eng`, `code`) as the label its text usually carries (`eng_Latn`, `code`):
    configs/languages.csv's, else FineWeb2's; a label, and a code neither knows, as it is."""
    if code == CODE or valid_label(code):
        return code
    return iso639_3_labels().get(code) or fineweb2_labels().get(code, code)


def iso639_3(code: str) -> str | None:
    """The ISO 639-3 code of a language named as `en`, `eng` or `eng_Latn` (None when not recognised)."""
    code = code.strip()
    if valid_label(code):
        return base_language(code)
    if code in (short := short_code_labels()):
        return base_language(short[code])
    return code if re.fullmatch(r"[a-z]{3}", code) else None


def code_label(language: str) -> str:
    """`Python` -> `code_python`; characters a folder name should not hold become `-`."""
    name = re.sub(r"[^a-z0-9+#._-]", "-", language.strip().lower()).lstrip(".-_")[:40]
    return f"{CODE}_{name or 'unknown'}"


def valid_label(label: str | None) -> bool:
    return bool(label) and LABEL.fullmatch(label) is not None


@cache
def language_set(column: str, counts: Path = COUNTS_FILE) -> frozenset[str]:
    """Languages with tokens in a column of mmBERT's counts; `any`: in any column (1,833 + code)."""
    try:
        with open(counts, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{counts}: no such file") from None
    columns = [c for c in rows[0] if c != "language"] if rows else []
    if column != "any" and column not in columns:
        raise ValueError(f"{counts}: no column {column!r} (columns: {', '.join(columns)}, or any)")
    chosen = columns if column == "any" else [column]
    return frozenset(row["language"] for row in rows if any(float(row[c] or 0) > 0 for c in chosen))


@dataclass(frozen=True)
class LanguageSet:
    """A language set from a column of a counts file shaped like mmBERT's (language + one column per phase)."""

    column: str = setting("any", help="the counts column whose languages with tokens form the set; any: all")
    counts: Path = setting(COUNTS_FILE, help="CSV with a `language` column (ISO 639-3, `code`) and count columns")

    def __post_init__(self) -> None:
        if not self.resolve():
            raise ValueError(f"the language set is empty (no tokens in column {self.column!r} of {self.counts})")

    def resolve(self) -> frozenset[str]:
        return language_set(self.column, self.counts)
