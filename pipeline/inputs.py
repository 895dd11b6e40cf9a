"""What the recipe's sources hold, before a build reads them.

`mmcorpus sources` shows each source's reader, the files its path matches, its first document (id, language, the
start of its text) and what the field mapping did to get it. A build checks the sources of one's own the same way
before any work: a path that matches no file, a file whose path holds no language where `lang_from_path` looks for
one, or a mapping that makes no document of the first records of the first file stops it with one line naming the
source's entry and the file.
"""

from dataclasses import dataclass, field

from pipeline.config import Recipe
from stages.base import Document
from stages.sources import MappedOptions, MappedReader, SourceTerms, create_reader
from stages.sources.base import BadRecord, ReaderOptions, not_the_files_fault

PROBE_RECORDS = 100  # of a source's first file: one of them must become a document


@dataclass
class SourceView:
    name: str
    reader: str  # a named source's own reader, or the `reader` of one's own
    path: str
    files: list[str]
    terms: SourceTerms
    sample: Document | None = None  # the first document of the first file
    mapping: list[str] = field(default_factory=list)  # what the mapping did with the sample's record
    problems: list[str] = field(default_factory=list)  # the rejects met before the sample
    unmatched: list[str] = field(default_factory=list)  # files whose path holds no language (lang_from_path)


def inspect_source(name: str, options: ReaderOptions, recipe: Recipe) -> SourceView:
    reader = create_reader(name, options, recipe.tokenizers)
    files = reader.list_files()
    view = SourceView(name, options.reader if isinstance(options, MappedOptions) else name, options.path, files,
                      recipe.sources.terms.get(name, SourceTerms()))
    if not files:
        return view
    if isinstance(reader, MappedReader):
        if reader.path_lang is not None:
            view.unmatched = [f for f in files if reader.path_lang.match(f) is None]
        view.sample, view.mapping = first_document(reader, files[0], view.problems)
    else:
        view.sample = next(reader.run(files[:1]), None)
        view.mapping = [f"{name}'s own reader (stages/sources/{name}.py)"]
    view.problems += [f"{r.origin}: {r.reason} {r.detail or ''}".strip() for r in reader.rejects]
    return view


def first_document(reader: MappedReader, relative: str, problems: list[str]) -> tuple[Document | None, list[str]]:
    """The first of a file's first PROBE_RECORDS records that maps to a document, and what the mapping did with it;
    each record that does not is a line of `problems` naming the fields it has."""
    try:
        for n, (row, record) in enumerate(reader.records(relative)):
            if n == PROBE_RECORDS:
                break
            try:
                doc = reader.document(relative, row, record)
            except BadRecord as error:
                problems.append(f"{relative}:{row}: {error.reason} {error} (its fields: {', '.join(record)})")
                continue
            return doc, reader.explain(relative, record, doc)
    except Exception as error:  # noqa: BLE001 - what quarantines the file in a build
        if not_the_files_fault(error):
            raise
        problems.append(f"{relative}: read:corrupt_file {type(error).__name__}: {' '.join(str(error).split())}")
    return None, []


def check_inputs(recipe: Recipe) -> list[SourceView]:
    """The sources of one's own, each checked: files matched, a language in every file's path where
    `lang_from_path` looks, a document among the first records; a ConfigError naming the entry otherwise."""
    views = []
    for name, options in recipe.sources.sources.items():
        if not isinstance(options, MappedOptions):
            continue
        at = recipe.sources.where / "sources" / name
        view = inspect_source(name, options, recipe)
        if not view.files:
            raise (at / "path").error(f"{options.path} matches no data file")
        if view.unmatched:
            raise (at / "lang_from_path").error(f"{options.lang_from_path!r} finds no language in the path of "
                                                f"{view.unmatched[0]} ({len(view.unmatched)} such file(s))")
        if view.sample is None:
            raise at.error(f"no document in the first {PROBE_RECORDS} records of {view.files[0]}: "
                           f"{view.problems[0] if view.problems else 'the file holds no record'}")
        views.append(view)
    return views


def describe(view: SourceView, width: int = 80) -> list[str]:
    """`mmcorpus sources`: a few lines per source."""
    lines = [f"{view.name}: reader {view.reader}, {len(view.files)} file(s) under {view.path}"]
    shown = ", ".join(view.files[:3]) + (f", ... ({len(view.files) - 3} more)" if len(view.files) > 3 else "")
    lines.append(f"  files    {shown or 'none'}")
    terms = [t for t in (view.terms.license, view.terms.description, view.terms.homepage) if t]
    lines.append(f"  terms    {' | '.join(terms) or 'none given (license, description, homepage, citation)'}")
    if view.sample is not None:
        meta = view.sample.metadata
        text = " ".join(view.sample.text.split())
        lines.append(f"  sample   {meta['origin']}  id {view.sample.id}  lang {meta['lang'] or '(detect)'}")
        lines.append(f"           text {text[:width]!r}" + (" ..." if len(text) > width else ""))
    elif view.files:
        lines.append("  sample   none: no record of the first file became a document")
    lines += [f"  {'mapping' if i == 0 else '':<8} {line}" for i, line in enumerate(view.mapping)]
    lines += [f"  {'skipped' if i == 0 else '':<8} {line}" for i, line in enumerate(view.problems[:5])]
    if view.unmatched:
        lines.append(f"  no lang  {len(view.unmatched)} file(s) whose path lang_from_path does not match, e.g. "
                     f"{view.unmatched[0]}")
    return lines
