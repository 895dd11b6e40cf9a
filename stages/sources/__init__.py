"""One reader per upstream source, by the source's key in sources.yaml."""

from stages.sources.base import SourceReader
from stages.sources.dolma import DolmaReader
from stages.sources.fineweb2 import FineWeb2Reader
from stages.sources.megawika import MegaWikaReader
from stages.sources.prolong import ProLongReader
from stages.sources.starcoder import StarCoderReader

READERS: dict[str, type[SourceReader]] = {
    reader.source: reader for reader in (FineWeb2Reader, DolmaReader, MegaWikaReader, ProLongReader, StarCoderReader)
}

__all__ = ["READERS", "SourceReader"]
