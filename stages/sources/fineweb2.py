"""FineWeb2 (HuggingFaceFW/fineweb-2): Parquet under `data/<lang>_<Script>/train/NNN_NNNNN.parquet`.

The `<lang>_<Script>_removed/` folders hold what FineWeb2's own filters removed; they are skipped unless
`include_removed: true`. The upstream label (`language`, `language_script`, `language_score`) is kept for LID;
`dump` and `file_path` (the WARC) go into the lineage, `minhash_cluster_size` into the pool for re-hydration.
"""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from stages.base import Document
from stages.settings import setting
from stages.sources.base import (
    BadRecord,
    ReaderOptions,
    SourceReader,
    SourceTerms,
    id_field,
    iter_parquet_rows,
    text_field,
)

log = logging.getLogger(__name__)

COLUMNS = ["text", "id", "dump", "url", "date", "file_path", "language", "language_score", "language_script",
           "minhash_cluster_size", "top_langs"]
LINEAGE = ("dump", "file_path", "minhash_cluster_size")


@dataclass(frozen=True)
class FineWeb2Options(ReaderOptions):
    include_removed: bool = setting(False, help="also read data/<lang>_<Script>_removed/ (what FineWeb2 filtered)")


class FineWeb2Reader(SourceReader):
    source = "fineweb2"
    terms = SourceTerms(license="odc-by", description="HuggingFaceFW/fineweb-2: ODC-By 1.0, and Common Crawl's terms "
                        "of use", homepage="https://huggingface.co/datasets/HuggingFaceFW/fineweb-2")
    Options = FineWeb2Options
    options: FineWeb2Options
    patterns = ("data/*/train/*.parquet", "*/train/*.parquet", "train/*.parquet")

    def accept(self, relative: str) -> bool:
        folder = self.folder(relative, up=2)
        if folder.endswith("_removed") and not self.options.include_removed:
            log.info("fineweb2: skipping %s (FineWeb2-removed; set include_removed to read it)", relative)
            return False
        return True

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return iter_parquet_rows(self, relative, COLUMNS, required=["text"])

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        folder_label = self.folder(relative, up=2).removesuffix("_removed")
        text = text_field(record, "text", required=True)
        language, script = text_field(record, "language"), text_field(record, "language_script")
        lang = f"{language}_{script}" if language and script else folder_label
        score = record.get("language_score")
        if score is not None and not isinstance(score, int | float):
            raise BadRecord(f"language_score is {type(score).__name__}, not a number")
        top_langs = record.get("top_langs")
        if isinstance(top_langs, str):
            try:
                record["top_langs"] = json.loads(top_langs)
            except json.JSONDecodeError:
                pass
        cluster_size = record.get("minhash_cluster_size")
        valid_size = cluster_size is None or (isinstance(cluster_size, int) and not isinstance(cluster_size, bool)
                                              and cluster_size >= 1)
        upstream = dict(dump=text_field(record, "dump"), file_path=text_field(record, "file_path"),
                        cluster_size=cluster_size if valid_size else None)
        doc_id = id_field(record) or f"{relative}:{row}"
        extra = {k: v for k, v in record.items() if k not in ("text", "id", "url", *LINEAGE)}
        doc = self.make_doc(doc_id, text, relative, row, lang=lang, lang_source="upstream", lang_score=score,
                            url=text_field(record, "url"), upstream=upstream, **extra)
        if not valid_size:
            self.note(doc, "read:bad_cluster_size")
        return doc
