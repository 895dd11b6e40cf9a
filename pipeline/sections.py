"""The recipe's sections: for each, its name, default file, the settings its keys are checked against, and how
its YAML mapping is read."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar, get_args, get_origin, get_type_hints

import fsspec

from pipeline.phases import PhaseConfig, parse_phases
from pipeline.yaml_files import read_yaml
from stages.assets import AssetSpec
from stages.dedup import DedupConfig
from stages.lid import LidConfig
from stages.paths import CONFIG_DIR
from stages.quality import QualityConfig, QualityRow
from stages.settings import ConfigError, Where, check_keys, closest, convert, load, plain
from stages.sources import FORMATS, READERS, HfOptions, MappedOptions, SourceTerms
from stages.sources.base import ReaderOptions
from stages.sources.mapped import split_glob

T = TypeVar("T")
TERMS = [f.name for f in fields(SourceTerms)]  # keys of a source's entry that go to the cards, not the reader
# A source's name becomes a folder of the pool and the prefix of its documents' ids.
SOURCE_NAME = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")


@dataclass(frozen=True)
class Section(Generic[T]):
    """One section of the recipe: a key of the recipe file, a `--<name>` option of the commands, a `--set` prefix."""

    name: str
    file: Path  # the default one
    settings: Any  # the type its keys are checked against (`--set`) and listed from (`config fields`)
    parse: Callable[[dict, Where], T] | None = None  # what its YAML mapping needs beyond becoming `settings`

    def read(self, data: dict, where: Where) -> T:
        """The section from its YAML mapping, every key and value checked."""
        return self.parse(data, where) if self.parse else convert(self.settings, data, where)

    def load(self, path: Path | None = None) -> T:
        """The section alone, from its own file (the default unless given)."""
        path = path or self.file
        return self.read(read_yaml(path), Where(path))

    def check_keys(self, keys: list[str], label: str) -> None:
        """Refuse a dotted key path (`fixed.min_doc_words`) that names no setting; `label` begins the message."""
        check_key_path(self.settings, keys, label)

    def documented(self) -> dict[str, type]:
        """Dotted prefix -> the settings class whose fields `config fields` lists under it."""
        if is_dataclass(self.settings):
            return {self.name: self.settings}
        key, value = get_args(self.settings)  # a mapping of entries: phases by number, tokenizers by role
        return {f"{self.name}.{'N' if key is int else '<name>'}": value}


@dataclass(frozen=True)
class SourcesConfig:
    """The inputs: each source (a key of stages.sources.READERS, or a name of one's own with a `reader`) with its
    reader's options, and the terms the data cards give for it."""

    sources: dict[str, ReaderOptions]
    shard_tokens: int | None = None  # tokens per shard for this input (small samples want small shards)
    terms: dict[str, SourceTerms] = field(default_factory=dict)
    where: Where = field(default=Where("sources"), compare=False)  # the section, for checks once a phase is chosen


def parse_sources(data: dict, where: Where) -> SourcesConfig:
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


def parse_quality(data: dict, where: Where) -> QualityConfig:
    config = load(QualityConfig, data, where)
    return QualityConfig(**{f.name: getattr(config, f.name) for f in fields(config)
                            if f.name != "languages"}, languages=fineweb2_rows(config.languages_file))


@cache
def fineweb2_rows(path: Path) -> dict[str, QualityRow]:
    """FineWeb2's per-language rows (thresholds, stop words, language_score), by lang_Script; checked like any
    other row, once per process (1,929 rows)."""
    return convert(dict[str, QualityRow], read_yaml(path), Where(path))


def check_key_path(tp: Any, keys: list[str], label: str) -> None:
    """Walk a dotted key path down a settings type; refuse a key it has no field for."""
    for key in keys:
        if tp is PhaseConfig and key in ("variants", "default_variant"):
            return  # free-form overrides, checked when the phase is loaded
        if is_dataclass(tp):
            hints = get_type_hints(tp)
            names = [f.name for f in fields(tp) if f.init and not f.metadata.get("derived")]
            if key not in names:
                raise ConfigError(f"{label}: unknown key {key!r}{closest(key, names)}")
            tp = hints[key]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            raise ConfigError(f"{label}: {key!r} is below a value that has no keys")
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and (is_dataclass(args[0]) or get_origin(args[0]) is dict):
            tp = args[0]


class SourcesSection(Section[SourcesConfig]):
    """A source's options depend on its reader: a named source's own, or those of the reader one's own names."""

    def check_keys(self, keys: list[str], label: str) -> None:
        if keys[0] == "sources" and len(keys) > 2 and keys[2] not in TERMS:
            # a source of one's own is checked against every option of its readers: its entry names which
            reader = READERS.get(keys[1])
            check_key_path(reader.Options if reader else HfOptions, keys[2:], label)
        elif keys[0] not in ("sources", "shard_tokens"):
            raise ConfigError(f"{label}: unknown key {keys[0]!r}{closest(keys[0], ['sources', 'shard_tokens'])}")

    def documented(self) -> dict[str, type]:
        return {**{f"sources.sources.{name}": reader.Options for name, reader in READERS.items()},
                "sources.sources.<your source>": HfOptions, "sources.sources.<any source>": SourceTerms}


SOURCES = SourcesSection("sources", CONFIG_DIR / "sources.yaml", SourcesConfig, parse_sources)
TOKENIZERS: Section[dict[str, AssetSpec]] = Section("tokenizers", CONFIG_DIR / "tokenizers.yaml", dict[str, AssetSpec])
LID: Section[LidConfig] = Section("lid", CONFIG_DIR / "lid.yaml", LidConfig)
QUALITY = Section("quality", CONFIG_DIR / "quality.yaml", QualityConfig, parse_quality)
DEDUP: Section[DedupConfig] = Section("dedup", CONFIG_DIR / "dedup.yaml", DedupConfig)
PHASES = Section("phases", CONFIG_DIR / "phases.yaml", dict[int, PhaseConfig], parse_phases)
SECTIONS: dict[str, Section] = {section.name: section for section in (SOURCES, TOKENIZERS, LID, QUALITY, DEDUP,
                                                                      PHASES)}
