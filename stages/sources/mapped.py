"""Sources of your own: JSON lines, Parquet, Dolma's documents or a Hugging Face dataset, read by a field mapping.

Any name in the sources YAML other than the named sources' is one of these: `reader: jsonl | parquet | dolma | hf`
and `path`, a folder, a file or a glob (`/data/corpus/*/part-*.jsonl.gz`), local or any fsspec URL. JSON lines are
read plain or compressed by their suffix (.gz, .zst, .bz2). The mapping names a record's fields, dotted paths
reaching into nested records (`meta.id`): `text`, `id` (a record without one is named by file and row), `url`, and
`metadata`, the fields kept with the document (by default every field the mapping does not read). The language
comes one way: `lang` (one label for every document, or `detect`: LID labels each), `lang_field` (with `lang_map`
from the file's codes to labels) or `lang_from_path` (`{lang}` in a pattern of the path below `path`). A label the
source gives stays, as an upstream label does (LID checks it); a value that is no label, no code of
configs/languages.csv and no key of lang_map is a read:unknown_language reject naming it.

`reader: dolma` reads Dolma's documents (`id, text, source, added, created, metadata`; the URL in
`metadata.url`). `reader: hf` reads a dataset repository (`hf://datasets/<org>/<name>`, or a local copy of one):
the data files of one config and split as its README's `configs` name them, or else as the Hub infers them (the
`datasets` library's own rules); its Parquet and JSON-lines files.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Literal

import yaml

from stages.base import Document
from stages.languages import label_of, valid_label
from stages.settings import ConfigError, setting
from stages.sources.base import (
    ReaderOptions,
    SourceReader,
    UnknownLanguage,
    id_field,
    iter_json_lines,
    iter_parquet_rows,
    text_field,
)

DETECT = "detect"
JSON_LINES = tuple(f"{name}{compression}" for name in (".jsonl", ".json", ".ndjson")
                   for compression in ("", ".gz", ".zst", ".bz2"))
DOLMA_URL = "metadata.url"
HF_EXTENSIONS = [".parquet", ".jsonl", ".json", ".ndjson"]  # datasets' filter: any dotted part of a file's name


@dataclass(frozen=True, kw_only=True)
class MappedOptions(ReaderOptions):
    reader: Literal["jsonl", "parquet", "dolma", "hf"] = setting(
        help="how the files are read: jsonl, parquet, dolma (Dolma's documents) or hf (a Hugging Face dataset)")
    text: str = setting("text", help="the text's field; a dotted path reaches into nested records (body.content)")
    id: str | None = setting("id", help="the id's field; a record without one is named by file and row")
    url: str | None = setting(None, help="the URL's field (dolma: metadata.url)")
    metadata: tuple[str, ...] | None = setting(
        None, help="fields kept with each document (the curated `extra` column); default: every field the mapping "
                   "does not read")
    lang: str | None = setting(None, help="every document's language: a label (eng_Latn, code_python), or detect "
                                          "(the LID stage labels each document)")
    lang_field: str | None = setting(None, help="the field holding each record's language: a label, an ISO 639-1 "
                                                "or 639-3 code of configs/languages.csv, or a key of lang_map")
    lang_map: dict[str, str] = setting(factory=dict, help="the source's language codes -> labels ({english: "
                                                          "eng_Latn}), for lang_field or lang_from_path")
    lang_from_path: str | None = setting(None, help="where the language sits in a file's path below `path`: "
                                                    "{lang}/, data/{lang}/train/, {lang}.jsonl.gz")

    def __post_init__(self) -> None:
        given = [name for name in ("lang", "lang_field", "lang_from_path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give the language one way: lang (a label, or detect), lang_field or lang_from_path"
                             + (f"; got {' and '.join(given)}" if given else ""))
        if self.lang is not None and self.lang != DETECT and not valid_label(self.lang):
            raise ValueError(f"lang: {self.lang!r} is neither a label (eng_Latn, code_python) nor detect")
        if self.lang is not None and self.lang_map:
            raise ValueError("lang_map: maps the codes of lang_field or lang_from_path, not lang")
        for code, label in self.lang_map.items():
            if not valid_label(label):
                raise ValueError(f"lang_map: {code}: {label!r} is not a label such as eng_Latn or code_python")
        if self.lang_from_path is not None and self.lang_from_path.count("{lang}") != 1:
            raise ValueError(f"lang_from_path: {self.lang_from_path!r} must hold {{lang}} once")


@dataclass(frozen=True, kw_only=True)
class HfOptions(MappedOptions):
    config: str | None = setting(None, help="reader hf: the dataset's config (its README's `configs`; default: "
                                            "the one marked default, else `default`)")
    split: str = setting("train", help="reader hf: the split whose data files are read")


def lookup(record: dict, path: str) -> object:
    """A field of a record by name, or by a dotted path into nested records (`meta.id`); None when absent."""
    if path in record:
        return record[path]
    head, dot, rest = path.partition(".")
    value = record.get(head) if dot else None
    return lookup(value, rest) if isinstance(value, dict) else None


def drop(record: dict, path: str) -> None:
    """Remove a field from a record; a nested one from copies of the records above it, which go when emptied."""
    if path in record:
        del record[path]
        return
    head, dot, rest = path.partition(".")
    if dot and isinstance(record.get(head), dict):
        record[head] = inner = dict(record[head])
        drop(inner, rest)
        if not inner:
            del record[head]


def path_pattern(template: str) -> re.Pattern:
    """`data/{lang}/train/` as a regex over the start of a path below the root, the language as group `lang`: `*`
    stays within a folder's name, `**` crosses folders, and the pattern ends at a folder's end."""
    pieces = {"{lang}": "(?P<lang>[^/]+?)", "**": ".*", "*": "[^/]*"}
    regex = "".join(pieces.get(part, re.escape(part)) for part in re.split(r"(\{lang\}|\*\*|\*)", template))
    return re.compile(regex if template.endswith("/") else f"{regex}(?=/|$)")


def split_glob(path: str, suffixes: tuple[str, ...]) -> tuple[str, str | None]:
    """The folder to list and the pattern below it: `/data/*/x-*.jsonl` -> (`/data`, `*/x-*.jsonl`); a data file
    (its name ends with one of `suffixes`) -> (its folder, its name); a folder -> (itself, None)."""
    parts = path.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if any(wildcard in part for wildcard in "*?["):
            return "/".join(parts[:i]), "/".join(parts[i:])
    if parts[-1].endswith(suffixes):
        return "/".join(parts[:-1]), parts[-1]
    return "/".join(parts), None


class MappedReader(SourceReader):
    """A source of your own; the subclasses say which files a folder holds and how a file's records are read."""

    Options = MappedOptions
    options: MappedOptions
    suffixes: tuple[str, ...]  # the data files of a folder

    def __init__(self, name: str, options: MappedOptions) -> None:
        root, self.pattern = split_glob(options.path, self.suffixes)
        super().__init__(root, **{f.name: getattr(options, f.name) for f in fields(options) if f.name != "path"})
        self.source, self.options = name, options
        self.patterns = (self.pattern,) if self.pattern else tuple(f"**/*{suffix}" for suffix in self.suffixes)
        self.url_field = options.url or (DOLMA_URL if options.reader == "dolma" else None)
        self.path_lang = path_pattern(options.lang_from_path) if options.lang_from_path else None
        self.read = [path for path in (options.text, options.id, self.url_field, options.lang_field) if path]

    def columns(self) -> list[str] | None:
        """The top-level fields a Parquet file is read for; None: all of them (metadata keeps every field)."""
        if self.options.metadata is None:
            return None
        return sorted({path.split(".")[0] for path in [*self.read, *self.options.metadata]})

    def parquet_rows(self, relative: str) -> Iterator[tuple[int, dict]]:
        return iter_parquet_rows(self, relative, self.columns(), required=[self.options.text.split(".")[0]])

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        options = self.options
        text = text_field({options.text: lookup(record, options.text)}, options.text, required=True)
        doc_id = id_field({options.id: lookup(record, options.id)}, options.id) if options.id else None
        url = text_field({self.url_field: lookup(record, self.url_field)}, self.url_field) if self.url_field else None
        lang, lang_source = self.language(relative, record)
        doc = self.make_doc(doc_id or f"{relative}:{row}", text, relative, row, lang=lang,  # type: ignore[arg-type]
                            lang_source=lang_source, url=url)
        doc.metadata["extra"] = self.kept(record)  # a field may share a name with make_doc's own arguments
        return doc

    def kept(self, record: dict) -> dict:
        """The fields `metadata` names, or else every field the mapping does not read."""
        if self.options.metadata is not None:
            return {path: lookup(record, path) for path in self.options.metadata}
        rest = dict(record)
        for path in self.read:
            drop(rest, path)
        return rest

    def language_code(self, relative: str, record: dict) -> str:
        """The language as the source gives it: the field's value or the path's part (raises for neither)."""
        if self.path_lang is None:
            field = str(self.options.lang_field)
            return str(text_field({field: lookup(record, field)}, field, required=True))
        match = self.path_lang.match(relative)
        if match is None:
            raise UnknownLanguage(f"{relative} does not match lang_from_path {self.options.lang_from_path!r}")
        return match.group("lang")

    def language(self, relative: str, record: dict) -> tuple[str | None, str]:
        """(label, lang_source): `expected` for LID to decide, `code`, or `upstream` (the source's own)."""
        options = self.options
        if options.lang == DETECT:
            return None, "expected"
        if options.lang is not None:
            label = options.lang
        else:
            code = self.language_code(relative, record)
            label = options.lang_map.get(code) or label_of(code)
            if label is None:
                where = f"field {options.lang_field}" if options.lang_field else "path"
                raise UnknownLanguage(f"language {code!r:.80} ({where}) is no label, no code of "
                                      "configs/languages.csv and not in lang_map")
        return label, "code" if label.startswith("code_") else "upstream"

    def explain(self, relative: str, record: dict, doc: Document) -> list[str]:
        """What the mapping did with one record, a line per field (`mmcorpus sources`)."""
        options = self.options
        doc_id = doc.id.removeprefix(f"{self.source}/")
        lines = [f"text  <- {options.text} ({len(doc.text):,} characters)",
                 f"id    <- {options.id} ({doc_id})" if options.id and lookup(record, options.id) not in (None, "")
                 else f"id    <- file and row ({doc_id}: the record has no {options.id or 'id field'})"]
        if options.lang == DETECT:
            lines.append("lang  <- detected by the LID stage")
        elif options.lang is not None:
            lines.append(f"lang  <- {options.lang} (every document)")
        else:
            code = self.language_code(relative, record)
            via = "lang_map" if code in options.lang_map else "as given" if code == doc.metadata["lang"] \
                else "configs/languages.csv"
            where = options.lang_field if options.lang_field else f"the path ({options.lang_from_path})"
            lines.append(f"lang  <- {where}: {code!r} -> {doc.metadata['lang']} ({via})")
        url = lookup(record, self.url_field) if self.url_field else None
        lines.append(f"url   <- {self.url_field} ({url})" if url else
                     f"url   <- none ({self.url_field} is absent)" if self.url_field else "url   <- not mapped")
        kept = doc.metadata["extra"]
        lines.append(f"extra <- {', '.join(kept) or 'nothing'}"
                     + (" (every field the mapping does not read)" if options.metadata is None else ""))
        return lines


class JsonLinesReader(MappedReader):
    suffixes = JSON_LINES

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return iter_json_lines(self, relative)


class ParquetReader(MappedReader):
    suffixes = (".parquet",)

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return self.parquet_rows(relative)


class HfReader(MappedReader):
    """A Hugging Face dataset repository: the Hub through fsspec's `hf://` (huggingface_hub's HfFileSystem, at
    $HF_ENDPOINT), or a local copy of one."""

    Options = HfOptions
    options: HfOptions
    suffixes = (*JSON_LINES, ".parquet")

    def list_files(self) -> list[str]:
        if self.pattern:
            return super().list_files()
        from datasets.data_files import resolve_pattern

        self.reach()
        base, patterns = self.split_patterns()
        prefix = self.fs_root.rstrip("/") + "/"
        found = set()
        for pattern in patterns:
            try:
                paths = resolve_pattern(pattern, base, allowed_extensions=HF_EXTENSIONS)
            except FileNotFoundError:  # a pattern of the card that matches nothing
                continue
            found |= {path.split("://", 1)[-1].removeprefix(prefix) for path in paths}
        return sorted(found)

    def split_patterns(self) -> tuple[str, list[str]]:
        """The folder and data-file patterns of the configured config and split: as the README's `configs` name
        them, else as the Hub infers them from the files."""
        from datasets.data_files import EmptyDatasetError, get_data_patterns, sanitize_patterns

        name, split = self.options.config, self.options.split
        configs = self.card_configs()
        chosen: dict = {}
        if configs:
            name = name or next((c.get("config_name") for c in configs if c.get("default")), "default")
            chosen = next((c for c in configs if c.get("config_name") == name), {})
            if not chosen:
                known = ", ".join(str(c.get("config_name")) for c in configs)
                raise ConfigError(f"source {self.source}: {self.root} has no config {name!r} (configs: {known})")
        elif name not in (None, "default"):
            raise ConfigError(f"source {self.source}: {self.root} has no config {name!r} (its README names none)")
        base = "/".join([self.root, *([chosen["data_dir"]] if chosen.get("data_dir") else [])])
        try:
            splits = sanitize_patterns(chosen["data_files"]) if "data_files" in chosen else get_data_patterns(base)
        except EmptyDatasetError:
            return base, []
        if split not in splits:
            raise ConfigError(f"source {self.source}: {self.root} has no split {split!r} (splits: "
                              f"{', '.join(splits)})")
        return base, list(splits[split])

    def card_configs(self) -> list[dict]:
        """The `configs` of the dataset card's YAML front matter (README.md), if it has any."""
        card = f"{self.fs_root}/README.md"
        if not self.fs.exists(card):
            return []
        with self.fs.open(card, "r", encoding="utf-8") as f:
            text = f.read()
        front = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
        try:
            configs = (yaml.safe_load(front) or {}).get("configs") if front else None
        except yaml.YAMLError as error:
            raise ConfigError(f"source {self.source}: {card}: front matter is not valid YAML: "
                              f"{' '.join(str(error).split())}") from None
        return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return self.parquet_rows(relative) if relative.endswith(".parquet") else iter_json_lines(self, relative)


FORMATS: dict[str, type[MappedReader]] = {
    "jsonl": JsonLinesReader, "dolma": JsonLinesReader, "parquet": ParquetReader, "hf": HfReader,
}
