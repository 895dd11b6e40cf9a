"""LID batch prediction against a plain one-document-at-a-time loop, and per-stage curation throughput."""

import copy
import time
from collections.abc import Callable

from bench.data import documents
from pipeline.sections import LID, QUALITY, TOKENIZERS
from stages.lid import FastTextLid, LanguageId, load_fasttext
from stages.quality import QualityFilter
from stages.tokenize import Gemma2Tokenizer, Tokenize


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_lid(n: int = 20_000) -> dict:
    """docs/s on one core: our batched predict vs calling the same fastText model per document."""
    texts = [doc.text for doc in documents(n)]
    config = LID.load()
    lid = FastTextLid(config.model, config.max_chars)
    model = load_fasttext(str(config.model.check()))

    def plain_loop() -> None:
        for text in texts:
            model.predict(text.replace("\n", " "), k=1)

    def batched() -> None:
        for start in range(0, len(texts), 256):
            lid.predict(texts[start:start + 256])

    baseline, ours = timed(plain_loop), timed(batched)
    return dict(name="lid_docs_per_s_per_core", value=n / ours, baseline=n / baseline, ratio=baseline / ours,
                baseline_name="fastText predict() one document at a time")


def bench_stages(n: int = 5_000) -> list[dict]:
    """docs/s and MB/s per core of each curation stage on the same documents (one process, one core)."""
    docs = documents(n, seed=1)
    megabytes = sum(len(doc.text.encode()) for doc in docs) / 1e6
    stages = [("lid", LanguageId(LID.load())), ("quality", QualityFilter(QUALITY.load())),
              ("tokenize", Tokenize(Gemma2Tokenizer(TOKENIZERS.load()["gemma2"])))]
    results = []
    for name, stage in stages:
        sum(1 for _ in stage.run(copy.deepcopy(docs[:50])))  # once per worker: models and compiled kernels load
        batch = copy.deepcopy(docs)
        seconds = timed(lambda stage=stage, batch=batch: sum(1 for _ in stage.run(batch)))
        results.append(dict(name=f"stage_{name}_docs_per_s_per_core", value=n / seconds, mb_per_s=megabytes / seconds))
    return results
