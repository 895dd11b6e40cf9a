"""FineWeb2 (HuggingFaceFW/fineweb-2): Parquet under `data/<lang>_<Script>/train/NNN_NNNNN.parquet`.

The `<lang>_<Script>_removed/` folders hold what FineWeb2's own filters removed; they are skipped unless
`include_removed: true`. The upstream label (`language`, `language_script`, `language_score`) is kept for LID.
"""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Document
from stages.settings import setting
from stages.sources.base import ReaderOptions, SourceReader, iter_parquet_rows

log = logging.getLogger(__name__)

COLUMNS = ["text", "id", "dump", "url", "date", "language", "language_score", "language_script",
           "minhash_cluster_size", "top_langs"]


@dataclass(frozen=True)
class FineWeb2Options(ReaderOptions):
    include_removed: bool = setting(False, help="also read data/<lang>_<Script>_removed/ (what FineWeb2 filtered)")


class FineWeb2Reader(SourceReader):
    source = "fineweb2"
    Options = FineWeb2Options
    options: FineWeb2Options
    patterns = ("data/*/train/*.parquet", "*/train/*.parquet", "train/*.parquet")

    def accept(self, relative: str) -> bool:
        folder = self.folder(relative, up=2)
        if folder.endswith("_removed") and not self.options.include_removed:
            log.info("fineweb2: skipping %s (FineWeb2-removed; set include_removed to read it)", relative)
            return False
        return True

    def read_file(self, relative: str) -> Iterator[Document]:
        folder_label = self.folder(relative, up=2).removesuffix("_removed")
        for row, record in iter_parquet_rows(self, relative, COLUMNS, required=["text"]):
            text = record.pop("text")
            if not isinstance(text, str):
                self.reject_record(relative, row, "read:bad_record", f"row {row}: text is {type(text).__name__}")
                continue
            language, script = record.get("language"), record.get("language_script")
            lang = f"{language}_{script}" if language and script else folder_label
            top_langs = record.get("top_langs")
            if isinstance(top_langs, str):
                try:
                    record["top_langs"] = json.loads(top_langs)
                except json.JSONDecodeError:
                    pass
            yield self.make_doc(
                record.pop("id") or f"{relative}:{row}", text, relative, row, lang=lang, lang_source="upstream",
                lang_score=record.get("language_score"), url=record.pop("url", None), **record,
            )
