"""Quality filtering.

The vertical slice rejects only documents with no visible text and scores every kept document 1.0 (unscored):
FineWeb2-style per-language heuristics and a real 0..1 score replace this in the quality issue.
"""

from stages.base import Document, Filter

UNSCORED = 1.0


class QualityFilter(Filter):
    name = "quality"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.text.strip():
            return False, "quality:empty_text"
        doc.metadata["quality"] = UNSCORED
        return True
