"""One reader per named source, by the source's key in sources.yaml; any other source names its `reader`
(stages/sources/mapped.py)."""

from stages.assets import AssetSpec
from stages.sources.base import ReaderOptions, SourceReader, SourceTerms
from stages.sources.dolma import DolmaReader
from stages.sources.fineweb2 import FineWeb2Reader
from stages.sources.mapped import FORMATS, HfOptions, MappedOptions, MappedReader
from stages.sources.megawika import MegaWikaReader
from stages.sources.prolong import ProLongReader
from stages.sources.starcoder import StarCoderReader

READERS: dict[str, type[SourceReader]] = {
    reader.source: reader for reader in (FineWeb2Reader, DolmaReader, MegaWikaReader, ProLongReader, StarCoderReader)
}


def create_reader(name: str, options: ReaderOptions, tokenizers: dict[str, AssetSpec]) -> SourceReader:
    """The reader of a configured source: a named source's own, else the one its `reader` option names."""
    if isinstance(options, MappedOptions):
        return FORMATS[options.reader](name, options)
    return READERS[name].create(options, tokenizers)


__all__ = ["FORMATS", "READERS", "HfOptions", "MappedOptions", "MappedReader", "SourceReader", "SourceTerms",
           "create_reader"]
