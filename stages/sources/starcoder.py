"""StarCoderData (bigcode/starcoderdata): Parquet per programming language, `<language>/train-*.parquet`."""

from collections.abc import Iterator

from stages.base import Document
from stages.languages import code_label
from stages.sources.base import SourceReader, SourceTerms, id_field, iter_parquet_rows, text_field

COLUMNS = ["content", "id", "max_stars_repo_path", "max_stars_repo_name", "max_stars_count"]


class StarCoderReader(SourceReader):
    source = "starcoder"
    terms = SourceTerms(license="other", description="bigcode/starcoderdata: The Stack's terms of use: each file "
                        "under its repository's licence", homepage="https://huggingface.co/datasets/bigcode/starcoderdata")
    patterns = ("*/*.parquet", "*.parquet")

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        return iter_parquet_rows(self, relative, COLUMNS, required=["content"])

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        content = text_field(record, "content", required=True)
        doc_id = id_field(record) or f"{relative}:{row}"
        extra = {k: v for k, v in record.items() if k not in ("content", "id")}
        return self.make_doc(doc_id, content, relative, row, lang=code_label(self.folder(relative)),
                             lang_source="code", **extra)
