"""MegaWika v2 (jhu-clsp/megawika-2): one folder per Wikipedia (ISO 639-1), JSON lines, one article a line.

Articles carry `title, wikicode, hash, last_revision, ..., text, elements, excerpts_with_citations`; the
plain `text` goes on, the structure (`elements`, citations) is not needed for an encoder corpus.
"""

from collections.abc import Iterator
from urllib.parse import quote

from stages.base import Document
from stages.languages import short_code_labels
from stages.sources.base import SourceReader, SourceTerms, id_field, iter_json_lines, text_field


class MegaWikaReader(SourceReader):
    source = "megawika"
    terms = SourceTerms(license="cc-by-sa-4.0", description="hltcoe/megawika: CC BY-SA 4.0",
                        homepage="https://huggingface.co/datasets/hltcoe/megawika")
    patterns = ("*/*.jsonl", "*/*.jsonl.gz", "*/*.jsonl.zst", "*/*.json", "*.jsonl", "*.jsonl.gz", "*.jsonl.zst")

    def records(self, relative: str) -> Iterator[tuple[int, dict]]:
        wiki = self.folder(relative)
        if wiki not in short_code_labels():
            raise ValueError(f"folder {wiki!r} is no language code in configs/languages.csv")
        return iter_json_lines(self, relative)

    def document(self, relative: str, row: int | str, record: dict) -> Document:
        wiki = self.folder(relative)
        title = text_field(record, "title") or ""
        text = text_field(record, "text", required=True)
        return self.make_doc(
            f"{wiki}/{id_field(record, 'hash') or title or row}", text, relative, row, lang=short_code_labels()[wiki],
            lang_source="upstream",
            url=f"https://{wiki}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}" if title else None,
            title=title, last_revision=record.get("last_revision"),
        )
