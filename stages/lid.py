"""Language identification.

The vertical slice keeps the upstream label (FineWeb2 `language`/`language_script`, MegaWika's folder,
StarCoder's programming language) or the language a Dolma subset / ProLong domain is configured to hold, and
rejects documents that end up with no label. Model-based detection and per-language thresholds replace this
in the LID issue.
"""

from stages.base import Document, Filter


class LanguageLabel(Filter):
    name = "lid"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.metadata.get("lang"):
            return False, "lid:no_label"
        return True
