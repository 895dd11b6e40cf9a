"""The recipe: one typed configuration tree, loaded once and passed down.

A recipe has six sections, each a YAML file (configs/recipe.yaml names the defaults) or a mapping inline in a
recipe file (`mmcorpus build -c recipe.yaml`): sources, tokenizers, lid, quality, dedup, phases. Every section
becomes the dataclass its stage declares (stages/*: fields with help), every key is checked, relative paths
resolve against the file that names them, and `--set section.key=value` overrides any value. Every problem is
a ConfigError naming the file and the key; the CLI prints it as one line and exits with status 2.
"""

import os
import re
import subprocess
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import fsspec
import yaml

from stages.assets import AssetSpec
from stages.dedup import DedupConfig
from stages.languages import CONFIG_DIR, COUNTS_FILE, LanguageSet
from stages.lid import LidConfig
from stages.mix import FINEWEB2_BANDS, ChunkRules, RehydrateBand, check_bands
from stages.quality import QualityConfig, QualityRow
from stages.settings import ConfigError, Where, check_keys, closest, convert, load, plain, setting
from stages.sources import FORMATS, READERS, HfOptions, MappedOptions, SourceTerms
from stages.sources.base import ReaderOptions
from stages.sources.mapped import split_glob

PROJECT_ROOT = CONFIG_DIR.parent
SAMPLES_DIR = PROJECT_ROOT / "samples"
RECIPE_FILE = CONFIG_DIR / "recipe.yaml"
PHASES_FILE = CONFIG_DIR / "phases.yaml"
SOURCES_FILE = CONFIG_DIR / "sources.yaml"
TOKENIZERS_FILE = CONFIG_DIR / "tokenizers.yaml"
LID_FILE = CONFIG_DIR / "lid.yaml"
DEDUP_FILE = CONFIG_DIR / "dedup.yaml"
QUALITY_FILE = CONFIG_DIR / "quality.yaml"
SECTIONS = ("sources", "tokenizers", "lid", "quality", "dedup", "phases")
TERMS = [f.name for f in fields(SourceTerms)]  # keys of a source's entry that go to the cards, not the reader
# A source's name becomes a folder of the pool and the prefix of its documents' ids.
SOURCE_NAME = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
MAX_ALIAS_VALUES = 100_000  # values a YAML text may repeat through aliases; an alias bomb repeats billions

__all__ = ["COUNTS_FILE", "ConfigError", "PROJECT_ROOT", "SAMPLES_DIR"]


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            text = f.read()
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if "&" in text:  # no anchor, no alias: FineWeb2's 1,929 rows skip the walk
        check_aliases(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def check_aliases(data: object, source: str) -> None:
    """Refuse YAML whose aliases repeat more than MAX_ALIAS_VALUES values, or refer to themselves. The parser
    shares one object per anchor, so loading is quick; whatever walks the values (the settings' checks, `config
    show`, the run table's JSON) would walk every repeat, for minutes and gigabytes. This walk stops early."""
    seen: set[int] = set()
    repeated = 0
    stack = [data]
    while stack:
        value = stack.pop()
        if not isinstance(value, dict | list):
            continue
        items = list(value.values()) if isinstance(value, dict) else value
        if id(value) in seen:
            repeated += len(items)
            if repeated > MAX_ALIAS_VALUES:
                raise ConfigError(f"{source}: YAML aliases repeat more than {MAX_ALIAS_VALUES:,} values "
                                  "(an alias bomb?): refused")
        seen.add(id(value))
        stack.extend(items)


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the recipe (docs/architecture.md section 10); a YAML `variants` entry overrides any field."""

    name: str = setting(help="the phase's name (pre-training, mid-training, decay)")
    budget_tokens: float = setting(help="the full-scale token budget (a sample build defaults to its pool)", gt=0)
    languages: LanguageSet = setting(help="the phase's language set: a column of mmBERT's counts")
    temperature: float = setting(help="sampling temperature τ: p(lang) ∝ n(lang)^τ", gt=0, le=1)
    max_epochs: float = setting(help="the most epochs of any (source, language)", ge=1)
    seq_len: int = setting(help="tokens per training sequence, bos and eos included", gt=2)
    min_chunk_tokens: int = setting(
        help="a later piece of a split document shorter than this takes tokens moved from the chunk before it "
             "(mmBERT's backfill); at most seq_len - 2", ge=1)
    always_skip: int = setting(help="a later piece of a split document shorter than this is dropped (the first "
                                    "piece is always kept)", ge=0)
    mask_rate: float = setting(help="MLM mask rate of the phase (the encoder reference uses it)", gt=0, lt=1)
    global_rope_theta: float = setting(help="RoPE θ of the global attention layers (the encoder reference's)", gt=0)
    local_rope_theta: float = setting(help="RoPE θ of the local (sliding-window) attention layers", gt=0)
    shard_tokens: int = setting(help="tokens per shard, at least seq_len (the sources config may set it for its "
                                     "input)")
    fineweb2_share: float = setting(help="FineWeb2's part of the budget", ge=0, le=1)
    other_sources: dict[str, float] = setting(factory=dict, help="the rest of the budget, in these proportions",
                                              ge=0)
    fixed_shares: dict[str, float] = setting(factory=dict, help="languages with a pinned share (decay-eng); "
                                                                "they sum to less than 1", ge=0, lt=1)
    quality_quantile: float = setting(
        0.0, help="keep documents at or above this quality quantile per language", ge=0, lt=1)
    rehydrate: bool = setting(False, help="repeat FineWeb2 documents by their upstream minhash_cluster_size band "
                                          "(re-hydration), within the epoch cap")
    rehydrate_bands: tuple[RehydrateBand, ...] = setting(
        FINEWEB2_BANDS, help="cluster-size bands and the copies each counts for (the last band open: null)")
    number: int = setting(0, help="the phase number (from the YAML key)")
    variant: str | None = setting(None, help="the variant built (from --variant or default_variant)")
    default_variant: str | None = setting(None, help="the variant `--phase N` builds")

    def __post_init__(self) -> None:
        checks = [  # each field's own range is checked as it is read (setting(..., ge=...))
            (self.min_chunk_tokens <= self.seq_len - 2,  # a backfilled piece must leave its donor a token
             f"min_chunk_tokens must be <= seq_len - 2 ({self.seq_len - 2}), got {self.min_chunk_tokens}"),
            (self.shard_tokens >= self.seq_len,  # a smaller shard holds less than a sequence, and is a task each
             f"shard_tokens must be >= seq_len ({self.seq_len}), got {self.shard_tokens}"),
            (sum(self.fixed_shares.values()) < 1, "fixed_shares must sum to less than 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_bands(self.rehydrate_bands)

    @property
    def id(self) -> str:
        """phase1, phase2, phase3 (its default variant), phase3-eng, phase3-cont."""
        named = self.variant and self.variant != self.default_variant
        return f"phase{self.number}-{self.variant}" if named else f"phase{self.number}"

    @property
    def chunking(self) -> ChunkRules:
        return ChunkRules(self.seq_len, self.min_chunk_tokens, self.always_skip)

    @property
    def language_codes(self) -> frozenset[str]:
        """ISO 639-3 codes as in mmBERT's counts, `code` for code."""
        return self.languages.resolve()

    @property
    def bands(self) -> tuple[RehydrateBand, ...] | None:
        """The re-hydration bands when the phase re-hydrates."""
        return self.rehydrate_bands if self.rehydrate else None

    def to_dict(self) -> dict:
        return plain(self) | {"id": self.id, "language_count": len(self.language_codes)}


@dataclass(frozen=True)
class PhasesConfig:
    """The phases YAML: phase number -> its fields, `variants` (name -> overrides) and `default_variant`."""

    entries: dict[int, dict]
    file: Path | str

    def phase(self, number: int, variant: str | None = None) -> PhaseConfig:
        where = Where(self.file)
        entry = self.entries.get(number)
        if entry is None:
            raise ConfigError(f"{self.file}: no phase {number} (phases: {', '.join(map(str, self.entries))})")
        variants = entry.get("variants") or {}
        default = entry.get("default_variant")
        variant = variant or default
        if variant is not None and variant not in variants:
            known = ", ".join(variants) or "none"
            raise ConfigError(f"{self.file}: phase {number} has no variant {variant!r} (variants: {known})")
        own = [f.name for f in fields(PhaseConfig) if f.name not in ("number", "variant", "default_variant")]
        check_keys(entry, [*own, "variants", "default_variant"], where / number)
        if not isinstance(variants, dict):
            raise (where / number / "variants").error("expected a mapping of variant names to overrides")
        for name, overrides in variants.items():
            if not isinstance(overrides, dict):
                raise (where / number / "variants" / name).error("expected a mapping of overrides")
            check_keys(overrides, own, where / number / "variants" / name)
        base = {k: v for k, v in entry.items() if k not in ("variants", "default_variant")}
        merged = base | variants.get(variant, {}) | {"number": number, "variant": variant, "default_variant": default}
        label = where / number / "variants" / variant if variant else where / number
        return load(PhaseConfig, merged, label)

    def numbers(self) -> list[int]:
        return sorted(self.entries)

    def validate(self) -> None:
        """Every phase and every variant, as a build of any of them would."""
        for number in self.numbers():
            for variant in [None, *(self.entries[number].get("variants") or {})]:
                self.phase(number, variant)


@dataclass(frozen=True)
class SourcesConfig:
    """The inputs: each source (a key of stages.sources.READERS, or a name of one's own with a `reader`) with its
    reader's options, and the terms the data cards give for it."""

    sources: dict[str, ReaderOptions]
    shard_tokens: int | None = None  # tokens per shard for this input (small samples want small shards)
    terms: dict[str, SourceTerms] = field(default_factory=dict)
    where: Where = field(default=Where("sources"), compare=False)  # the section, for checks once a phase is chosen


@dataclass(frozen=True)
class Recipe:
    sources: SourcesConfig
    tokenizers: dict[str, AssetSpec]
    lid: LidConfig
    quality: QualityConfig
    dedup: DedupConfig
    phases: PhasesConfig
    files: dict[str, str]  # section -> the file it was read from

    def to_dict(self) -> dict:
        """The whole resolved recipe (FineWeb2's 1,929 rows stand as their file, whose sha256 the run records)."""
        return {
            "files": self.files,
            "sources": {"sources": {name: plain(options) | plain(self.sources.terms.get(name, SourceTerms()))
                                    for name, options in self.sources.sources.items()},
                        "shard_tokens": self.sources.shard_tokens},
            "tokenizers": plain(self.tokenizers), "lid": plain(self.lid), "quality": plain(self.quality),
            "dedup": plain(self.dedup), "phases": {str(k): v for k, v in self.phases.entries.items()},
        }

    def phase(self, number: int, variant: str | None = None) -> PhaseConfig:
        """A phase to build: its sources named or configured; the input's shard_tokens, which replaces the phase's,
        holds a sequence at least."""
        phase = self.phases.phase(number, variant)
        known = [*READERS, *(name for name in self.sources.sources if name not in READERS)]
        for unknown in sorted(set(phase.other_sources) - set(known)):
            raise (Where(self.phases.file) / number / "other_sources").error(
                f"unknown source {unknown!r}{closest(unknown, known)}")
        shard_tokens = self.sources.shard_tokens
        if shard_tokens is not None and shard_tokens < phase.seq_len:
            raise (self.sources.where / "shard_tokens").error(
                f"must be >= the seq_len of {phase.id} ({phase.seq_len}), got {shard_tokens}")
        return phase

    def assets(self) -> dict[str, AssetSpec]:
        """Every model and tokenizer file the recipe names, by role."""
        return {**{f"tokenizer:{role}": spec for role, spec in self.tokenizers.items()}, "lid:model": self.lid.model}


def _load_sources(data: dict, where: Where) -> SourcesConfig:
    check_keys(data, ["sources", "shard_tokens"], where)
    entries = data.get("sources")
    if not isinstance(entries, dict) or not entries:
        raise (where / "sources").error("must map source names to their settings")
    sources, terms = {}, {}
    for name, entry in entries.items():
        at = where / "sources" / name
        named = READERS.get(name)
        if named is None and not (isinstance(entry, dict) and "reader" in entry):
            raise (where / "sources").error(f"unknown source {name!r}{closest(str(name), READERS)}; a source of your "
                                            f"own names its reader (reader: {' | '.join(FORMATS)})")
        if named is None and not SOURCE_NAME.fullmatch(str(name)):
            raise (where / "sources").error(f"{name!r}: a source's name is a folder name and begins every document "
                                            "id: lowercase letters and digits, one - or _ between them")
        if not isinstance(entry, dict) or not entry.get("path"):
            raise at.error(f"source {name!r} needs a `path`")
        # A reader's name that is not one is refused by loading the options every reader of one's own shares.
        kind = named.Options if named else getattr(FORMATS.get(str(entry["reader"])), "Options", MappedOptions)
        check_keys(entry, [*(f.name for f in fields(kind) if f.init), *TERMS], at)
        options = load(kind, {key: value for key, value in entry.items() if key not in TERMS}, at)
        own_terms = {key: value for key, value in entry.items() if key in TERMS}
        terms[name] = load(SourceTerms, plain(named.terms if named else SourceTerms()) | own_terms, at)
        root = split_glob(options.path, ())[0]  # a path's wildcards match files below a folder that must exist
        if "://" not in options.path:
            if not Path(root).exists():
                raise (at / "path").error(f"source {name!r}: {root} does not exist")
        else:
            try:
                fsspec.core.url_to_fs(options.path)
            except (ImportError, ValueError) as error:
                raise (where / "sources" / name / "path").error(f"{options.path}: {error}") from None
        sources[name] = options
    shard_tokens = convert(int | None, data.get("shard_tokens"), where / "shard_tokens")
    if shard_tokens is not None and shard_tokens < 1:
        raise (where / "shard_tokens").error("must be >= 1")
    return SourcesConfig(sources, shard_tokens, terms=terms, where=where)


def _load_quality(data: dict, where: Where) -> QualityConfig:
    config = load(QualityConfig, data, where)
    return QualityConfig(**{f.name: getattr(config, f.name) for f in fields(config)
                            if f.name != "languages"}, languages=fineweb2_rows(config.languages_file))


@cache
def fineweb2_rows(path: Path) -> dict[str, QualityRow]:
    """FineWeb2's per-language rows (thresholds, stop words, language_score), by lang_Script; checked like any
    other row, once per process (1,929 rows)."""
    return convert(dict[str, QualityRow], read_yaml(path), Where(path))


def _load_phases(data: dict, where: Where) -> PhasesConfig:
    entries = {}
    for key, entry in data.items():
        number = convert(int, key, where)
        if not isinstance(entry, dict):
            raise (where / key).error("expected a mapping of phase fields")
        entries[number] = entry
    phases = PhasesConfig(entries, where.file)
    phases.validate()
    return phases


def _load_tokenizers(data: dict, where: Where) -> dict[str, AssetSpec]:
    return convert(dict[str, AssetSpec], data, where)


LOADERS = {
    "sources": _load_sources, "tokenizers": _load_tokenizers, "lid": lambda d, w: load(LidConfig, d, w),
    "quality": _load_quality, "dedup": lambda d, w: load(DedupConfig, d, w), "phases": _load_phases,
}
DEFAULT_FILES = {"sources": SOURCES_FILE, "tokenizers": TOKENIZERS_FILE, "lid": LID_FILE, "quality": QUALITY_FILE,
                 "dedup": DEDUP_FILE, "phases": PHASES_FILE}


def load_recipe(recipe: Path | None = None, sections: dict[str, Path | None] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe file's sections (configs/recipe.yaml by default), each replaced by its own file where given,
    then the `--set` overrides; every section checked."""
    recipe = recipe or RECIPE_FILE
    named = read_yaml(recipe) if recipe != RECIPE_FILE or recipe.exists() else {}
    check_keys(named, SECTIONS, Where(recipe))
    raw: dict[str, tuple[dict, Where]] = {}
    for section in SECTIONS:
        given = (sections or {}).get(section)
        entry = named.get(section, DEFAULT_FILES[section]) if given is None else given
        if isinstance(entry, dict):
            raw[section] = (entry, Where(recipe, (section,)))
        elif isinstance(entry, str | Path):
            path = Path(entry) if given is not None else (recipe.parent / os.path.expanduser(str(entry))).resolve()
            raw[section] = (read_yaml(path), Where(path))
        else:
            raise Where(recipe, (section,)).error("expected a file name or a mapping")
    changed: list[tuple[str, str, list[str]]] = []  # (option text, section, keys) of each --set
    for override in overrides:
        section, keys, value = parse_override(override)
        changed.append((override, section, keys))
        data = raw[section][0]
        for key in keys[:-1]:
            key = next((k for k in data if str(k) == key), key)  # phases are numbered: YAML keys are ints
            data = data.setdefault(key, {})
            if not isinstance(data, dict):
                raise ConfigError(f"--set {override}: {key} is not a mapping")
        data[next((k for k in data if str(k) == keys[-1]), keys[-1])] = value
    try:
        loaded = {section: LOADERS[section](data, where) for section, (data, where) in raw.items()}
    except ConfigError as error:
        raise _blamed(error, changed, raw) from None
    files = {section: str(where.file) for section, (_, where) in raw.items()}
    return Recipe(files=files, **loaded)


def _blamed(error: ConfigError, changed: list[tuple[str, str, list[str]]],
            raw: dict[str, tuple[dict, Where]]) -> ConfigError:
    """The error as the `--set` option's when it is about a value the option gave (at or below its key)."""
    at = error.where
    for text, section, keys in changed:
        where = raw[section][1]
        key = (*where.keys, *keys)
        if at is not None and at.file == where.file and at.keys[:len(key)] == key:
            return Where(f"--set {text}", at.keys[len(where.keys):]).error(error.reason)
    return error


def parse_override(text: str) -> tuple[str, list[str], Any]:
    """`quality.fixed.min_doc_words=100` -> ("quality", ["fixed", "min_doc_words"], 100); the key path checked
    against the section's settings, the value read as YAML."""
    path, sep, value = text.partition("=")
    keys = path.strip().split(".")
    if not sep or len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {text}: expected section.key=value (e.g. quality.fixed.min_doc_words=100)")
    if keys[0] not in SECTIONS:
        raise ConfigError(f"--set {text}: unknown section {keys[0]!r}{closest(keys[0], SECTIONS)}")
    roots: dict[str, Any] = {"lid": LidConfig, "quality": QualityConfig, "dedup": DedupConfig,
                             "tokenizers": dict[str, AssetSpec], "phases": dict[int, PhaseConfig]}
    if keys[0] == "sources":
        if keys[1] == "sources" and len(keys) > 3 and keys[3] not in TERMS:
            # a source of one's own is checked against every option of its readers: its entry names which
            reader = READERS.get(keys[2])
            _check_path(reader.Options if reader else HfOptions, keys[3:], text)
        elif keys[1] != "shard_tokens" and keys[1] != "sources":
            raise ConfigError(f"--set {text}: unknown key {keys[1]!r}{closest(keys[1], ['sources', 'shard_tokens'])}")
    else:
        _check_path(roots[keys[0]], keys[1:], text)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text}: not a YAML value: {' '.join(str(error).split())}") from None
    check_aliases(parsed, f"--set {text}")
    return keys[0], keys[1:], parsed


def _check_path(tp: Any, keys: list[str], text: str) -> None:
    for key in keys:
        if tp is PhaseConfig and key in ("variants", "default_variant"):
            return  # free-form overrides, checked when the phase is loaded
        if is_dataclass(tp):
            hints = get_type_hints(tp)
            names = [f.name for f in fields(tp) if f.init and not f.metadata.get("derived")]
            if key not in names:
                raise ConfigError(f"--set {text}: unknown key {key!r}{closest(key, names)}")
            tp = hints[key]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            raise ConfigError(f"--set {text}: {key!r} is below a value that has no keys")
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and (is_dataclass(args[0]) or get_origin(args[0]) is dict):
            tp = args[0]


# One-section loaders, for code and tests that need a single part of the recipe.
def load_sources(path: Path = SOURCES_FILE) -> SourcesConfig:
    return _load_sources(read_yaml(path), Where(path))


def load_tokenizers(path: Path = TOKENIZERS_FILE) -> dict[str, AssetSpec]:
    return _load_tokenizers(read_yaml(path), Where(path))


def load_lid(path: Path = LID_FILE) -> LidConfig:
    return load(LidConfig, read_yaml(path), Where(path))


def load_quality(path: Path = QUALITY_FILE) -> QualityConfig:
    return _load_quality(read_yaml(path), Where(path))


def load_dedup(path: Path = DEDUP_FILE) -> DedupConfig:
    return load(DedupConfig, read_yaml(path), Where(path))


def load_phases(path: Path = PHASES_FILE) -> PhasesConfig:
    return _load_phases(read_yaml(path), Where(path))


def load_phase(number: int, variant: str | None = None, path: Path = PHASES_FILE) -> PhaseConfig:
    return load_phases(path).phase(number, variant)


def upstream_min_scores(quality: QualityConfig) -> dict[str, float]:
    """FineWeb2's minimum GlotLID score per lang_Script, which LID holds upstream labels to."""
    return {lang: row.language_score for lang, row in quality.languages.items() if row.language_score is not None}


def git_commit() -> str | None:
    """The project's commit (a Ray job's copy has no .git: the submitter passes it as MMCORPUS_GIT_COMMIT)."""
    if os.environ.get("MMCORPUS_GIT_COMMIT"):
        return os.environ["MMCORPUS_GIT_COMMIT"]
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")
