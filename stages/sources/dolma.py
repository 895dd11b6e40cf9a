"""Dolma v1.7 (allenai/dolma): gzipped JSON lines, `<subset>/<name>-NNNN.json.gz`.

Records carry `id, text, source, added, created, metadata`. Dolma has no language label: each subset folder
is configured with the language it is expected to hold (`subsets: {cc_en_head: eng_Latn, starcoder: code}`),
which LID checks; folders not configured are not read.
"""

from collections.abc import Iterator

from stages.base import Document
from stages.languages import CODE, code_label
from stages.sources.base import SourceReader, iter_json_lines


class DolmaReader(SourceReader):
    source = "dolma"

    def __init__(self, path: str, **options: object) -> None:
        super().__init__(path, **options)
        self.subsets: dict[str, str] = dict(options.get("subsets") or {})
        self.patterns = tuple(f"{subset}/*.json{ext}" for subset in self.subsets for ext in (".gz", "l", "l.gz"))

    def read_file(self, relative: str) -> Iterator[Document]:
        subset = relative.split("/")[-2]
        expected = self.subsets[subset]
        for line, record in iter_json_lines(self, relative):
            metadata = record.get("metadata") or {}
            lang = code_label(metadata.get("language") or "unknown") if expected == CODE else expected
            yield self.make_doc(
                f"{subset}/{record.get('id') or f'{relative}:{line}'}", record["text"], relative, line, lang=lang,
                url=metadata.get("url"), subset=subset, dolma_source=record.get("source"),
                added=record.get("added"), created=record.get("created"), metadata=metadata,
            )
