"""StarCoderData (bigcode/starcoderdata): Parquet per programming language, `<language>/train-*.parquet`."""

from collections.abc import Iterator

from stages.base import Document
from stages.languages import code_label
from stages.sources.base import SourceReader, iter_parquet_rows

COLUMNS = ["content", "id", "max_stars_repo_path", "max_stars_repo_name", "max_stars_count"]


class StarCoderReader(SourceReader):
    source = "starcoder"
    patterns = ("*/*.parquet", "*.parquet")

    def read_file(self, relative: str) -> Iterator[Document]:
        lang = code_label(self.folder(relative))
        for row, record in iter_parquet_rows(self, relative, COLUMNS, required=["content"]):
            content = record.pop("content")
            if not isinstance(content, str):
                self.reject_record(relative, row, "read:bad_record", f"row {row}: content is not text")
                continue
            yield self.make_doc(str(record.pop("id") or f"{relative}:{row}"), content, relative, row, lang=lang,
                                lang_source="code", **record)
