"""Dolma v1.7 (allenai/dolma): JSON lines, gzip or zstd, `<subset>/<name>-NNNN.json.gz` (or `.json.zst`).

Records carry `id, text, source, added, created, metadata`. Each subset folder is configured with the language
it is expected to hold (`subsets: {cc_en_head: eng_Latn, starcoder: code}`), which LID checks, and folders not
configured are not read. Where a record's metadata names a language (`metadata.language`, e.g. `en`, with
`language_score`), LID checks it against the expected label as it checks an upstream label. Without `subsets`,
every folder is read as English, except `starcoder` as code.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Document
from stages.languages import CODE, code_label
from stages.settings import setting
from stages.sources.base import (
    BadRecord,
    ReaderOptions,
    SourceReader,
    SourceTerms,
    id_field,
    iter_json_lines,
    text_field,
)

DEFAULT_LANG = "eng_Latn"
EXTENSIONS = (".gz", ".zst", "l", "l.gz", "l.zst")  # after `*.json`


@dataclass(frozen=True)
class DolmaOptions(ReaderOptions):
    subsets: dict[str, str] | None = setting(
        None, help="subset folder -> the language it holds (lang_Script or code); unlisted folders are not read")


class DolmaReader(SourceReader):
    source = "dolma"
    terms = SourceTerms(license="odc-by", description="allenai/dolma (v1.7): ODC-By 1.0; each subset also under its "
                        "own source's terms", homepage="https://huggingface.co/datasets/allenai/dolma")
    Options = DolmaOptions
    options: DolmaOptions

    def __init__(self, path: str, **options: object) -> None:
        super().__init__(path, **options)
        self.subsets = self.options.subsets
        folders = list(self.subsets) if self.subsets else ["*"]
        self.patterns = tuple(f"{folder}/*.json{ext}" for folder in folders for ext in EXTENSIONS)
        if not self.subsets:  # the path may be one subset's folder itself
            self.patterns += tuple(f"*.json{ext}" for ext in EXTENSIONS)

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return iter_json_lines(self, relative)

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        subset = self.folder(relative)
        expected = self.subsets[subset] if self.subsets else (CODE if subset == "starcoder" else DEFAULT_LANG)
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise BadRecord(f"metadata is {type(metadata).__name__}, not a mapping")
        is_code = expected == CODE
        text = text_field(record, "text", required=True)
        language = metadata.get("language")  # a label beside the text, not the text: a malformed one is ignored
        return self.make_doc(
            f"{subset}/{id_field(record) or f'{relative}:{row}'}", text, relative, row,
            lang=code_label("unknown") if is_code else expected, lang_source="code" if is_code else "expected",
            url=text_field(metadata, "url"), upstream_lang=language if isinstance(language, str) and not is_code
            else None, subset=subset, dolma_source=record.get("source"),
            added=record.get("added"), created=record.get("created"), metadata=metadata,
        )
