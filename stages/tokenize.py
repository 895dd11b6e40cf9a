"""Tokenizers: Gemma 2 for the pool (SentencePiece `.model` or `tokenizer.json`), Llama 3 for ProLong's ids.

Both are set in configs/tokenizers.yaml by local path (or, for Gemma 2, a hub id when online). Nothing is
downloaded at run time: `mmcorpus fetch-assets` puts the files in the cache once, at set-up.
"""

import logging
from collections.abc import Iterator
from functools import cache, cached_property
from typing import TYPE_CHECKING

from stages.assets import AssetSpec, file_digest
from stages.base import BatchStage, Document
from stages.pieces import PieceCache, cut_rule_refusal

if TYPE_CHECKING:
    import tiktoken

log = logging.getLogger(__name__)

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_START = 128000  # 256 special tokens follow the 128,000 BPE ranks
LLAMA3_VOCAB = 128256


class Gemma2Tokenizer:
    """Gemma 2 ids without bos/eos (chunking adds them): SentencePiece for a `.model` (on one thread, by cached
    pieces where the model allows it: stages/pieces.py), else `tokenizers`."""

    def __init__(self, spec: AssetSpec, threads: int = 1) -> None:
        self.spec = spec
        self.threads = threads  # 1 in the pipeline: one Ray task, one core
        local = spec.check()
        if local is not None and local.suffix != ".json":
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(local))
            self.vocab_size = self.sp.get_piece_size()
            self.pad_id, self.eos_id, self.bos_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.bos_id()
            self.mask_id = self.sp.piece_to_id("<mask>")
            # on one thread (a pool task) cached pieces pay; on more, SentencePiece's own threads do
            refusal = cut_rule_refusal(self.sp) if threads == 1 else "more than one thread"
            self.pieces = PieceCache(self.sp) if refusal is None else None
            if refusal is not None:
                log.info("%s: encoded whole, not by cached pieces: %s", local.name, refusal)
        else:
            from tokenizers import Tokenizer

            self.hf = Tokenizer.from_file(str(local)) if local else Tokenizer.from_pretrained(spec.path)
            self.hf.no_padding()
            self.vocab_size = self.hf.get_vocab_size()
            self.pad_id, self.eos_id = self.hf.token_to_id("<pad>"), self.hf.token_to_id("<eos>")
            self.bos_id, self.mask_id = self.hf.token_to_id("<bos>"), self.hf.token_to_id("<mask>")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if hasattr(self, "sp"):
            if self.pieces is not None:
                return self.pieces.encode_batch(texts)
            return self.sp.encode(texts, num_threads=self.threads)
        return [enc.ids for enc in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        if hasattr(self, "sp"):
            return self.sp.decode(ids)
        return self.hf.decode(ids, skip_special_tokens=False)

    @property
    def special_ids(self) -> set[int]:
        """Ids that masking never makes targets."""
        return {self.pad_id, self.bos_id, self.eos_id, self.mask_id}

    @cached_property
    def sha256(self) -> str | None:
        local = self.spec.local
        return file_digest(local) if local else None


@cache
def load_gemma2(spec: AssetSpec) -> Gemma2Tokenizer:
    """One tokenizer per worker process: Ray reuses workers across tasks, and loading takes a tenth of a second."""
    return Gemma2Tokenizer(spec)


def llama3_encoding(spec: AssetSpec) -> "tiktoken.Encoding":
    """Llama 3's tokenizer as a tiktoken Encoding, built from the `.tiktoken` ranks file."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    local = spec.check()
    if local is None:
        raise FileNotFoundError(f"Llama-3 tokenizer {spec.path} must be a local .tiktoken file")
    ranks = load_tiktoken_bpe(str(local))
    specials = [
        "<|begin_of_text|>", "<|end_of_text|>", *(f"<|reserved_special_token_{i}|>" for i in range(4)),
        "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
        *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
    ]
    return tiktoken.Encoding(
        name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
        special_tokens={token: LLAMA3_SPECIAL_START + i for i, token in enumerate(specials)},
    )


class Tokenize(BatchStage):
    """Adds `input_ids` (Gemma 2, no specials) and counts tokens; rejects documents that encode to nothing."""

    name = "tokenize"

    def __init__(self, tokenizer: Gemma2Tokenizer, batch_size: int = 256) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def process(self, batch: list[Document]) -> Iterator[Document]:
        with self.track_time(batch):
            ids = self.tokenizer.encode_batch([doc.text for doc in batch])
        for doc, input_ids in zip(batch, ids, strict=True):
            if not input_ids:
                self.reject(doc, "tokenize:no_tokens")
                continue
            doc.metadata["input_ids"] = input_ids
            self.stats.tokens[self.key(doc)] += len(input_ids)
            yield self.keep(doc)
