"""Where curation's seconds go: seconds per MB of text for each stage's main steps, measured one after another
on the same generated documents in one process (one core), so that the next speed-up is chosen from numbers.

    python -m bench.profile
"""

import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.data import documents
from manifests.layout import Layout
from manifests.schemas import CURATED
from manifests.writer import ParquetSink
from pipeline.sections import LID, QUALITY, TOKENIZERS
from stages.dedup import MinhashConfig, MinhashSignatures
from stages.lid import LanguageId
from stages.ngrams import repeated_ngrams
from stages.quality import (
    Margins,
    Rejected,
    c4_lines,
    fineweb,
    gopher_length,
    gopher_quality,
    gopher_repetition,
)
from stages.sources.fineweb2 import FineWeb2Reader
from stages.text import dominant_script, script_of, split_words
from stages.tokenize import Gemma2Tokenizer


def _each(items: list, step: Callable[..., object]) -> Callable[[], None]:
    def run() -> None:
        for item in items:
            try:
                step(*item)
            except Rejected:
                pass
    return run


def bench_profile(n: int = 3_000) -> list[dict]:
    docs = documents(n, seed=2)
    megabytes = sum(len(doc.text.encode()) for doc in docs) / 1e6
    quality = QUALITY.load()
    rows = {lang: quality.thresholds(lang) for lang in {doc.metadata["lang"] for doc in docs}}
    scripts = {doc.id: script_of(doc.metadata["lang"]) or dominant_script(doc.text) for doc in docs}
    words = [split_words(doc.text, scripts[doc.id]) for doc in docs]
    by_doc = list(zip(docs, words, strict=True))
    signatures = MinhashSignatures(MinhashConfig())
    shingles = [signatures.shingles(doc.text, doc.metadata["lang"]) for doc in docs]
    tokenizer = Gemma2Tokenizer(TOKENIZERS.load()["gemma2"])
    texts = [doc.text for doc in docs]
    repeated_ngrams(words[0], [2], [5])  # Numba loads compiled kernels once per worker, not per MB
    signatures.minhash(shingles[0])
    steps: dict[str, tuple[str, Callable[[], object]]] = {}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        for lang in rows:
            table = pa.table({"text": [d.text for d in docs if d.metadata["lang"] == lang],
                              "id": [d.id for d in docs if d.metadata["lang"] == lang]})
            table = table.append_column("language", pa.array([lang.split("_")[0]] * table.num_rows))
            table = table.append_column("language_script", pa.array([lang.split("_")[1]] * table.num_rows))
            table = table.append_column("language_score", pa.array([0.99] * table.num_rows))
            (root / "in" / "data" / lang / "train").mkdir(parents=True)
            pq.write_table(table, root / "in" / "data" / lang / "train" / "000_00000.parquet")
        reader = FineWeb2Reader(str(root / "in"))
        files = reader.list_files()
        steps["read"] = ("read", lambda: sum(1 for _ in reader.run(files)))
        lid = LanguageId(LID.load())
        steps["lid"] = ("lid", lambda: sum(1 for _ in lid.run(copy.deepcopy(docs))))
        steps["words"] = ("quality", lambda: [split_words(doc.text, scripts[doc.id]) for doc in docs])
        c4 = [(d.text, lambda line, d=d: split_words(line, scripts[d.id]), rows[d.metadata["lang"]])
              for d in docs if rows[d.metadata["lang"]].c4]
        if c4:  # C4's line filters apply to the languages FineWeb2 lacks (English): absent from some corpora
            steps["c4_lines"] = ("quality", _each(c4, c4_lines))
        steps["gopher_length"] = ("quality", _each(
            [(w, rows[d.metadata["lang"]], Margins("q")) for d, w in by_doc], gopher_length))
        for name, rule in (("gopher_repetition", gopher_repetition), ("fineweb", fineweb),
                           ("gopher_quality", gopher_quality)):
            steps[name] = ("quality", _each([(d.text, w, rows[d.metadata["lang"]], Margins("q")) for d, w in by_doc],
                                            rule))
        steps["ngram_hashing"] = ("dedup", lambda: [signatures.shingles(d.text, d.metadata["lang"]) for d in docs])
        steps["minhash"] = ("dedup", lambda: [signatures.minhash(s) for s in shingles])
        steps["tokenizer"] = ("tokenize", lambda: [tokenizer.encode_batch(texts[i:i + 256])
                                                   for i in range(0, len(texts), 256)])
        layout = Layout(root / "out")

        def write() -> None:
            with ParquetSink(layout, "curated.parquet", CURATED) as sink:
                for doc in docs:
                    sink.write(dict(id=doc.id, text=doc.text, source="bench", lang=doc.metadata["lang"],
                                    lang_score=0.99, url=None, quality=0.5, origin="", dump=None, file_path=None,
                                    cluster_size=None, extra=json.dumps({})))

        steps["parquet_write"] = ("curate", write)
        seconds = {}
        for name, (_, run) in steps.items():
            started = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - started
    total = sum(seconds.values())
    return [dict(name=f"profile_{name}_s_per_mb", value=seconds[name] / megabytes,
                 notes=f"{stage}: {megabytes / seconds[name]:.1f} MB/s, {seconds[name] / total:.0%} of these steps")
            for name, (stage, _) in steps.items()] + [
        dict(name="profile_total_s_per_mb", value=total / megabytes,
             notes=f"{megabytes / total:.2f} MB/s for every step above in turn ({megabytes:.1f} MB, {n} documents)")]


def main() -> None:
    for row in bench_profile():
        print(f"{row['name']:<36} {row['value']:>8.4f}  {row['notes']}")


if __name__ == "__main__":
    main()
