"""ProLong (princeton-nlp/prolong-data-64K): MosaicML MDS shards of Llama-3 token ids packed to 65,536.

Layout: `<domain>/<procNN-64>/index.json` + `shard.NNNNN.mds[.zstd]`; columns `input_ids` (ndarray:uint32),
`indices` (ndarray:uint32 of shape (k, 2): [start, end) of each packed document), `domain` (str), `length`.
Each document is cut out by `indices`, stripped of Llama-3 special tokens and decoded to text, which is then
curated like any other text. Domains are configured with the language they are expected to hold
(`domains: {textbooks: eng_Latn, thestackv1_concat_by_repo-65536: code}`); without `domains`, every domain is
read as English, except `thestack*` as code.
"""

import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from stages.assets import AssetSpec
from stages.base import Document
from stages.languages import CODE, code_label
from stages.mds import MDSError, ShardInfo, decompress, iter_samples, read_index
from stages.settings import setting
from stages.sources.base import ReaderOptions, SourceReader, SourceTerms
from stages.tokenize import LLAMA3_SPECIAL_START, LLAMA3_VOCAB, llama3_encoding

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProLongOptions(ReaderOptions):
    tokenizer: str = setting("llama3", help="the tokenizers-config role of ProLong's Llama-3 ids")
    domains: dict[str, str] | None = setting(
        None, help="domain folder -> the language it holds (lang_Script or code); unlisted domains are not read")


class ProLongReader(SourceReader):
    source = "prolong"
    terms = SourceTerms(license="other", description="princeton-nlp/prolong-data-64K: no licence on its card: each "
                        "component keeps its upstream terms",
                        homepage="https://huggingface.co/datasets/princeton-nlp/prolong-data-64K")
    patterns = ("*/shard.*.mds", "*/shard.*.mds.zstd", "*/*/shard.*.mds", "*/*/shard.*.mds.zstd")
    Options = ProLongOptions
    options: ProLongOptions

    def __init__(self, path: str, llama3: AssetSpec, **options: object) -> None:
        super().__init__(path, **options)
        self.llama3_spec = llama3
        self.domains = self.options.domains

    @classmethod
    def create(cls, options: ReaderOptions, tokenizers: dict[str, AssetSpec]) -> "ProLongReader":
        assert isinstance(options, ProLongOptions)
        llama3 = cls.tokenizer_for(tokenizers, options.tokenizer, cls.source)
        return cls(**{f.name: getattr(options, f.name) for f in fields(options)}, llama3=llama3)

    @cached_property
    def llama3(self) -> "tiktoken.Encoding":
        return llama3_encoding(self.llama3_spec)

    def accept(self, relative: str) -> bool:
        domain = relative.split("/")[0]
        if self.domains is not None and domain not in self.domains:
            log.info("prolong: skipping %s (domain %s not configured)", relative, domain)
            return False
        # A compressed shard is read through its raw name's index entry; keep one file per shard.
        return not (relative.endswith(".zstd") and self.fs.exists(f"{self.fs_root}/{relative[:-5]}"))

    def shard_info(self, relative: str) -> ShardInfo:
        folder, name = posixpath.split(relative)
        with self.open(posixpath.join(folder, "index.json"), "rb") as f:
            shards = read_index(f.read().decode("utf-8"))
        for info in shards:
            if name in (info.raw_basename, info.zip_basename):
                return info
        raise MDSError(f"{name} is not listed in {folder}/index.json")

    def read_file(self, relative: str) -> Iterator[Document]:
        info = self.shard_info(relative)
        if "input_ids" not in info.column_names:
            raise MDSError(f"missing column(s) ['input_ids']; shard has {sorted(info.column_names)}")
        with self.open(relative) as f:
            data = f.read()
        raw = decompress(data, info.compression if relative.endswith(".zstd") else None)
        domain = relative.split("/")[0]
        expected = self.domains[domain] if self.domains else (CODE if domain.startswith("thestack") else "eng_Latn")
        lang, lang_source = (code_label("unknown"), "code") if expected == CODE else (expected, "expected")
        for sample_index, sample in enumerate(iter_samples(raw, info)):
            input_ids = np.asarray(sample["input_ids"]).reshape(-1)
            spans = np.asarray(sample.get("indices", [[0, len(input_ids)]])).reshape(-1, 2)
            for doc_index, (start, end) in enumerate(spans.tolist()):
                row = f"{sample_index}/{doc_index}"
                if not 0 <= start < end <= len(input_ids):
                    self.reject_record(relative, row, "read:bad_record",
                                       f"indices [{start}, {end}) outside {len(input_ids)} ids")
                    continue
                ids = input_ids[start:end]
                outside = int(np.count_nonzero(ids >= LLAMA3_VOCAB))
                ids = ids[ids < LLAMA3_SPECIAL_START]  # bos/eos and the other specials carry no text
                text = self.llama3.decode_bytes(ids.tolist()).decode("utf-8", errors="replace")
                doc = self.make_doc(f"{relative}:{row}", text, relative, row, lang=lang, lang_source=lang_source,
                                    domain=sample.get("domain"), llama3_tokens=int(end - start))
                if outside:
                    self.note(doc, "read:bad_token_id")  # ids past Llama-3's vocabulary: dropped from the text
                yield doc
