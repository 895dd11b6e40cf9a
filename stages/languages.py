"""Language labels in FineWeb2's `lang_Script` form, and the mappings from other label styles."""

import csv
import re
from functools import cache
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CODE = "code"  # the language set entry that admits every `code_<language>` label
# A label is also a folder name under pool/: nothing else may pass (no `..`, no `/`).
LABEL = re.compile(r"(?:[a-z]{2,3}_[A-Z][a-z]{3}|code_[a-z0-9][a-z0-9+#._-]{0,40})")


@cache
def _language_rows(path: Path = CONFIG_DIR / "languages.csv") -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def short_code_labels() -> dict[str, str]:
    """Wikipedia / ISO 639-1 code (`de`, `als`) -> `deu_Latn`, `gsw_Latn`, from configs/languages.csv."""
    return {row["code"]: f"{row['lang']}_{row['script']}" for row in _language_rows()}


def other_scripts() -> dict[str, frozenset[str]]:
    """ISO 639-3 code -> the scripts it is also written in besides its usual one (`srp` -> {Latn})."""
    rows = _language_rows()
    return {row["lang"]: frozenset(row["other_scripts"].split("|")) for row in rows if row["other_scripts"]}


def base_language(label: str) -> str:
    """`deu_Latn` -> `deu`; every `code_<language>` -> `code` (how mmBERT's counts name languages)."""
    return CODE if label.startswith(f"{CODE}_") else label.split("_", 1)[0]


def code_label(language: str) -> str:
    """`Python` -> `code_python`; characters a folder name should not hold become `-`."""
    name = re.sub(r"[^a-z0-9+#._-]", "-", language.strip().lower()).lstrip(".-_")[:40]
    return f"{CODE}_{name or 'unknown'}"


def valid_label(label: str | None) -> bool:
    return bool(label) and LABEL.fullmatch(label) is not None
