"""Typed configuration loaded from configs/*.yaml; every problem is a ConfigError naming the file and field."""

import csv
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import fsspec
import yaml

from stages.assets import AssetSpec
from stages.dedup import KINDS, MinhashConfig
from stages.languages import CONFIG_DIR
from stages.lid import LidConfig
from stages.quality import QualityConfig
from stages.sources import READERS

PROJECT_ROOT = CONFIG_DIR.parent
SAMPLES_DIR = PROJECT_ROOT / "samples"
PHASES_FILE = CONFIG_DIR / "phases.yaml"
SOURCES_FILE = CONFIG_DIR / "sources.yaml"
TOKENIZERS_FILE = CONFIG_DIR / "tokenizers.yaml"
LID_FILE = CONFIG_DIR / "lid.yaml"
DEDUP_FILE = CONFIG_DIR / "dedup.yaml"
QUALITY_FILE = CONFIG_DIR / "quality.yaml"
COUNTS_FILE = CONFIG_DIR / "mmbert-language-counts.csv"


class ConfigError(ValueError):
    """Bad usage or configuration: the CLI prints it as one line and exits with status 2."""


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def language_set(column: str, counts: Path = COUNTS_FILE) -> frozenset[str]:
    """Languages with tokens in a column of mmBERT's counts; `any`: in any column (1,833 + code)."""
    try:
        with open(counts, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ConfigError(f"{counts}: no such file") from None
    columns = [c for c in rows[0] if c != "language"] if rows else []
    if column != "any" and column not in columns:
        raise ConfigError(f"{counts}: no column {column!r} (columns: {', '.join(columns)}, or any)")
    chosen = columns if column == "any" else [column]
    return frozenset(row["language"] for row in rows if any(float(row[c] or 0) > 0 for c in chosen))


@dataclass(frozen=True)
class PhaseConfig:
    number: int
    name: str
    budget_tokens: float
    languages: frozenset[str]  # ISO 639-3 codes as in mmBERT's counts, `code` for code
    language_column: str  # the column of mmBERT's counts the set comes from
    temperature: float
    max_epochs: float
    quality_quantile: float
    seq_len: int
    min_chunk_tokens: int
    mask_rate: float
    rope_theta: float
    shard_tokens: int
    fineweb2_share: float
    other_sources: dict[str, float]
    fixed_shares: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    default_variant: str | None = None

    @property
    def id(self) -> str:
        """phase1, phase2, phase3 (its default variant), phase3-eng, phase3-cont."""
        named = self.variant and self.variant != self.default_variant
        return f"phase{self.number}-{self.variant}" if named else f"phase{self.number}"

    def to_dict(self) -> dict:
        return asdict(self) | {"languages": sorted(self.languages), "id": self.id}


def load_phase(number: int, variant: str | None = None, path: Path = PHASES_FILE) -> PhaseConfig:
    phases = read_yaml(path)
    entry = phases.get(number)
    if entry is None:
        raise ConfigError(f"{path}: no phase {number} (phases: {', '.join(map(str, phases))})")
    variants = entry.get("variants") or {}
    default = entry.get("default_variant")
    variant = variant or default
    if variant is not None and variant not in variants:
        known = ", ".join(variants) or "none"
        raise ConfigError(f"{path}: phase {number} has no variant {variant!r} (variants: {known})")
    entry = {k: v for k, v in entry.items() if k not in ("variants", "default_variant")} | variants.get(variant, {})
    where = f"{path}: phase {number}" + (f" variant {variant}" if variant else "")
    try:
        phase = PhaseConfig(
            number=number, name=str(entry["name"]), budget_tokens=float(entry["budget_tokens"]),
            languages=language_set(str(entry["languages"]["column"]),
                                   path.parent / entry["languages"].get("counts", COUNTS_FILE.name)),
            language_column=str(entry["languages"]["column"]), temperature=float(entry["temperature"]),
            max_epochs=float(entry["max_epochs"]), quality_quantile=float(entry.get("quality_quantile", 0.0)),
            seq_len=int(entry["seq_len"]), min_chunk_tokens=int(entry["min_chunk_tokens"]),
            mask_rate=float(entry["mask_rate"]), rope_theta=float(entry["rope_theta"]),
            shard_tokens=int(entry["shard_tokens"]), fineweb2_share=float(entry["fineweb2_share"]),
            other_sources={str(k): float(v) for k, v in (entry.get("other_sources") or {}).items()},
            fixed_shares={str(k): float(v) for k, v in (entry.get("fixed_shares") or {}).items()},
            variant=variant, default_variant=default,
        )
    except KeyError as error:
        raise ConfigError(f"{where}: missing field {error}") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{where}: {error}") from None
    checks = [
        (0 < phase.temperature <= 1, f"temperature must be in (0, 1], got {phase.temperature}"),
        (phase.budget_tokens > 0, f"budget_tokens must be > 0, got {phase.budget_tokens}"),
        (phase.max_epochs >= 1, f"max_epochs must be >= 1, got {phase.max_epochs}"),
        (bool(phase.languages), "the language set is empty"),
        (0 <= phase.quality_quantile < 1, f"quality_quantile must be in [0, 1), got {phase.quality_quantile}"),
        (2 < phase.min_chunk_tokens <= phase.seq_len, "min_chunk_tokens must be in (2, seq_len]"),
        (0 <= phase.fineweb2_share <= 1, f"fineweb2_share must be in [0, 1], got {phase.fineweb2_share}"),
        (all(w >= 0 for w in phase.other_sources.values()), "other_sources weights must be >= 0"),
        (sum(phase.fixed_shares.values()) < 1, "fixed_shares must sum to less than 1"),
    ]
    for unknown in set(phase.other_sources) - set(READERS):
        checks.append((False, f"other_sources names unknown source {unknown!r} (known: {', '.join(READERS)})"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    return phase


@dataclass(frozen=True)
class SourceConfig:
    name: str
    path: str  # local path or fsspec URL
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourcesConfig:
    file: Path
    sources: dict[str, SourceConfig]
    shard_tokens: int | None = None

    def to_dict(self) -> dict:
        return {"file": str(self.file), "shard_tokens": self.shard_tokens,
                "sources": {name: asdict(source) for name, source in self.sources.items()}}


def load_sources(path: Path = SOURCES_FILE) -> SourcesConfig:
    data = read_yaml(path)
    entries = data.get("sources")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: `sources` must map source names to their settings")
    sources = {}
    for name, entry in entries.items():
        if name not in READERS:
            raise ConfigError(f"{path}: unknown source {name!r} (known: {', '.join(READERS)})")
        if not isinstance(entry, dict) or not entry.get("path"):
            raise ConfigError(f"{path}: source {name!r} needs a `path`")
        location = str(entry["path"])
        if "://" not in location:
            location = str((path.parent / os.path.expanduser(location)).resolve())
            if not Path(location).exists():
                raise ConfigError(f"{path}: source {name!r}: path {location} does not exist")
        else:
            fsspec.core.url_to_fs(location)  # an unknown protocol fails here, before any work
        sources[name] = SourceConfig(name, location, {k: v for k, v in entry.items() if k != "path"})
    shard_tokens = data.get("shard_tokens")
    if shard_tokens is not None and int(shard_tokens) < 1:
        raise ConfigError(f"{path}: shard_tokens must be >= 1")
    return SourcesConfig(path, sources, int(shard_tokens) if shard_tokens else None)


def load_tokenizers(path: Path = TOKENIZERS_FILE) -> dict[str, AssetSpec]:
    data = read_yaml(path)
    try:
        return {role: AssetSpec(str(entry["path"]), entry.get("sha256")) for role, entry in data.items()}
    except (KeyError, TypeError) as error:
        raise ConfigError(f"{path}: every tokenizer needs a `path` ({error})") from None


def asset_entries(*paths: Path) -> list[tuple[AssetSpec, dict]]:
    """Every (file spec, {package, member}) in these configs, for `mmcorpus fetch-assets`."""
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "path" in node and "asset" in node:
                found.append((AssetSpec(str(node["path"]), node.get("sha256")), node["asset"]))
            for value in node.values():
                walk(value)

    for path in paths:
        walk(read_yaml(path))
    return found


def load_lid(path: Path = LID_FILE, quality: Path | None = None) -> LidConfig:
    data = read_yaml(path)
    try:
        model = data["model"]
        min_score = data.get("min_score") or {}
        fineweb2 = fineweb2_rows(quality or path.parent / QUALITY_FILE.name)
        config = LidConfig(
            model=AssetSpec(str(model["path"]), model.get("sha256")),
            languages=language_set(str((data.get("languages") or {}).get("column", "any"))),
            upstream=str(data.get("upstream", "trust")), unknown_to_model=str(data.get("unknown_to_model", "keep")),
            min_score=float(min_score.get("default", 0.5)),
            min_score_overrides={str(k): float(v) for k, v in (min_score.get("overrides") or {}).items()},
            upstream_min_score={lang: float(row["language_score"]) for lang, row in fineweb2.items()},
            max_chars=int(data.get("max_chars", 1000)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None
    if config.upstream not in ("trust", "verify"):
        raise ConfigError(f"{path}: upstream must be trust or verify, got {config.upstream!r}")
    if config.unknown_to_model not in ("keep", "reject"):
        raise ConfigError(f"{path}: unknown_to_model must be keep or reject, got {config.unknown_to_model!r}")
    return config


@cache
def fineweb2_rows(path: Path = QUALITY_FILE) -> dict[str, dict]:
    """FineWeb2's per-language rows (thresholds, stop words, language_score), by lang_Script; parsed once per
    process (1,929 rows take half a second)."""
    name = read_yaml(path).get("languages_file")
    return read_yaml(path.parent / name) if name else {}


def load_quality(path: Path = QUALITY_FILE) -> QualityConfig:
    data = read_yaml(path)
    for key in ("default", "code"):
        if not isinstance(data.get(key), dict):
            raise ConfigError(f"{path}: `{key}` must be a mapping of thresholds")
    return QualityConfig(default=data["default"], languages=fineweb2_rows(path),
                         overrides=data.get("overrides") or {}, fixed=data.get("fixed") or {}, code=data["code"])


def load_dedup(path: Path = DEDUP_FILE) -> tuple[MinhashConfig, list[str]]:
    """The MinHash parameters and the dedup passes to run, in pipeline order."""
    data = read_yaml(path)
    kinds = list(data.get("kinds") or [])
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ConfigError(f"{path}: unknown dedup kind(s) {unknown} (known: {', '.join(KINDS)})")
    try:
        config = MinhashConfig(**(data.get("minhash") or {}))
    except TypeError as error:
        raise ConfigError(f"{path}: minhash: {error}") from None
    if config.bands < 1 or config.rows < 1 or config.n_grams < 1 or not 0 <= config.min_similarity <= 1:
        raise ConfigError(f"{path}: minhash needs bands, rows, n_grams >= 1 and min_similarity in [0, 1]")
    return config, [kind for kind in KINDS if kind in kinds]
