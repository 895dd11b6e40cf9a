"""MegaWika v2 (jhu-clsp/megawika-2): one folder per Wikipedia (ISO 639-1), JSON lines, one article a line.

Articles carry `title, wikicode, hash, last_revision, ..., text, elements, excerpts_with_citations`; the
plain `text` goes on, the structure (`elements`, citations) is not needed for an encoder corpus.
"""

from collections.abc import Iterator
from urllib.parse import quote

from stages.base import Document
from stages.languages import short_code_labels
from stages.sources.base import SourceReader, iter_json_lines


class MegaWikaReader(SourceReader):
    source = "megawika"
    patterns = ("*/*.jsonl", "*/*.jsonl.gz", "*/*.jsonl.zst", "*/*.json", "*.jsonl", "*.jsonl.gz", "*.jsonl.zst")

    def read_file(self, relative: str) -> Iterator[Document]:
        wiki = self.folder(relative)
        lang = short_code_labels().get(wiki)
        if lang is None:
            raise ValueError(f"folder {wiki!r} is no language code in configs/languages.csv")
        for line, record in iter_json_lines(self, relative):
            title = record.get("title") or ""
            yield self.make_doc(
                f"{wiki}/{record.get('hash') or title or line}", record["text"], relative, line, lang=lang,
                lang_source="upstream",
                url=f"https://{wiki}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}" if title else None,
                title=title, last_revision=record.get("last_revision"),
            )
