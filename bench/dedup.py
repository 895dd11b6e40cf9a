"""Dedup on generated documents with planted duplicates: recall, false removals, speed, against datatrove.

The corpus: distinct documents of words drawn (by frequency) from the samples' vocabulary per language, plus
planted exact copies (case and spacing changed), near copies at several word-edit rates, and pairs of
distinct documents sharing a boilerplate header and footer. Both pipelines read the same files on one core.
"""

import collections
import contextlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.utils.word_tokenizers import WordTokenizer

from bench.data import sample_texts
from manifests.layout import Layout
from manifests.schemas import CURATED
from manifests.writer import write_parquet
from pipeline.dedup import run_dedup
from pipeline.runner import Runner, Task
from stages.dedup import DedupConfig, MinhashConfig, MinhashSignatures
from stages.words import WORD

LANGUAGES = ("deu_Latn", "rus_Cyrl", "spa_Latn", "fra_Latn", "ell_Grek", "pol_Latn", "tur_Latn", "ukr_Cyrl")
EDIT_RATES = (0.01, 0.03, 0.05, 0.1, 0.2)
FILES = 8


def vocabulary() -> dict[str, tuple[list[str], list[int]]]:
    counts: dict[str, collections.Counter] = {lang: collections.Counter() for lang in LANGUAGES}
    for lang, text in sample_texts():
        if lang in counts:
            counts[lang].update(w.lower() for w in WORD.findall(text))
    return {lang: (list(c), list(c.values())) for lang, c in counts.items()}


def edit(words: list[str], rate: float, vocab: tuple[list[str], list[int]], rng: random.Random) -> list[str]:
    edited = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        i = rng.randrange(len(edited))
        action = rng.choice(("substitute", "insert", "delete"))
        if action == "delete" and len(edited) > 10:
            del edited[i]
        else:
            word = rng.choices(vocab[0], vocab[1])[0]
            if action == "insert":
                edited.insert(i, word)
            else:
                edited[i] = word
    return edited


def as_text(words: list[str]) -> str:
    lines = [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    return "\n".join(lines)


def planted_corpus(root: Path, n_base: int, seed: int = 0) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Write the corpus as FineWeb2 Parquet (for datatrove) and curated Parquet (ours); return docs and pairs."""
    rng = random.Random(seed)
    vocab = vocabulary()
    docs, pairs = [], []
    for i in range(n_base):
        lang = LANGUAGES[i % len(LANGUAGES)]
        words = rng.choices(vocab[lang][0], vocab[lang][1], k=rng.randint(150, 400))
        docs.append(dict(id=f"base-{i}", lang=lang, words=words))
        roll = rng.random()
        if roll < 0.10:
            copy = as_text(words).replace(" ", "  ").replace("\n", "\n\n")
            docs.append(dict(id=f"exact-{i}", lang=lang, text=copy))
            pairs.append((f"base-{i}", f"exact-{i}", "exact"))
        elif roll < 0.10 + 0.05 * len(EDIT_RATES):
            rate = EDIT_RATES[int((roll - 0.10) / 0.05)]
            docs.append(dict(id=f"near{rate}-{i}", lang=lang, words=edit(words, rate, vocab[lang], rng)))
            pairs.append((f"base-{i}", f"near{rate}-{i}", f"near {rate:.0%}"))
        elif roll < 0.40:
            header = rng.choices(vocab[lang][0], vocab[lang][1], k=25)
            other = rng.choices(vocab[lang][0], vocab[lang][1], k=rng.randint(150, 400))
            docs[-1]["words"] = header + words + header
            docs.append(dict(id=f"boiler-{i}", lang=lang, words=header + other + header))
            pairs.append((f"base-{i}", f"boiler-{i}", "boilerplate"))
    rng.shuffle(docs)
    for doc in docs:
        doc["text"] = doc.get("text") or as_text(doc.pop("words"))
        doc.pop("words", None)
    for n in range(FILES):
        part = docs[n::FILES]
        upstream = pa.table({"text": [d["text"] for d in part], "id": [d["id"] for d in part],
                             "language": [d["lang"][:3] for d in part]})
        (root / "fineweb2").mkdir(parents=True, exist_ok=True)
        pq.write_table(upstream, root / "fineweb2" / f"{n:05d}.parquet")
    return docs, pairs


def write_curated(layout: Layout, part: str, docs: list[dict]) -> dict:
    rows = [dict(id=d["id"], text=d["text"], source="bench", lang=d["lang"], lang_score=1.0, url=None, quality=1.0,
                 origin="", extra="{}") for d in docs]
    write_parquet(layout, Layout.curated("bench", part), rows, CURATED)
    return {"docs": len(rows)}


def ours(root: Path, docs: list[dict]) -> tuple[float, set[str]]:
    """Our dedup (exact and MinHash passes) on one Ray worker, from curated files a first stage writes."""
    layout = Layout(root / "ours")
    parts = [("bench", f"part-{n:05d}") for n in range(FILES)]
    with Runner(layout, workers=1) as runner:
        runner.run("bench-curated", [Task(part, write_curated, dict(layout=layout, part=part, docs=docs[n::FILES]))
                                     for n, (_, part) in enumerate(parts)])
        start = time.perf_counter()
        run_dedup(runner, layout, parts, DedupConfig(kinds=("exact", "minhash")))
        seconds = time.perf_counter() - start
    clusters = pq.read_table(layout.path(Layout.clusters(DedupConfig().minhash))).to_pylist()
    return seconds, {row["id"] for row in clusters if not row["kept"]}


class SpaceTokenizer(WordTokenizer):
    """Words split on spaces for datatrove's steps: its own fallback tokenizer needs spaCy (not installed) and
    its English one NLTK's punkt data (a download)."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


@contextlib.contextmanager
def quiet_datatrove(log: Path) -> Iterator[None]:
    """datatrove's executors log every task to stderr (loguru sinks they add themselves): send that to a file."""
    with open(log, "a") as sink, contextlib.redirect_stderr(sink):
        yield


def datatrove(root: Path) -> tuple[float, set[str]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig as DatatroveConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    work = root / "datatrove"
    work.mkdir(parents=True, exist_ok=True)
    config = DatatroveConfig(hash_config=HashConfig(precision=64))

    def reader() -> ParquetReader:
        return ParquetReader(str(root / "fineweb2"), glob_pattern="*.parquet", text_key="text", id_key="id")

    def run(pipeline: list, tasks: int, name: str) -> None:
        with quiet_datatrove(work / "datatrove.log"):
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                                  logging_dir=str(work / "logs" / name)).run()

    start = time.perf_counter()
    run([reader(), MinhashDedupSignature(output_folder=str(work / "sig"), config=config, language=SpaceTokenizer())],
        FILES, "sig")
    run([MinhashDedupBuckets(input_folder=str(work / "sig"), output_folder=str(work / "buckets"), config=config)],
        config.num_buckets, "buckets")
    run([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)],
        1, "cluster")
    seconds = time.perf_counter() - start
    run([reader(), MinhashDedupFilter(input_folder=str(work / "remove"),
                                      exclusion_writer=JsonlWriter(str(work / "removed"), compression=None))],
        FILES, "filter")
    removed = set()
    for path in (work / "removed").glob("*.jsonl"):
        removed |= {json.loads(line)["id"] for line in path.read_text().splitlines()}
    return seconds, removed


def score(docs: list[dict], pairs: list[tuple[str, str, str]], removed: set[str], jaccard: dict) -> dict:
    """Recall over planted pairs at Jaccard >= 0.8; false removals over documents with no planted partner at
    Jaccard >= 0.5 (pairs in between are near-duplicates either way and count in neither)."""
    positives = [(a, b) for a, b, _ in pairs if jaccard[(a, b)] >= 0.8]
    similar = {x for a, b, _ in pairs if jaccard[(a, b)] >= 0.5 for x in (a, b)}
    distinct = [d["id"] for d in docs if d["id"] not in similar]
    found = sum(a in removed or b in removed for a, b in positives)
    return dict(recall=found / len(positives), false_removal=sum(d in removed for d in distinct) / len(distinct),
                positives=len(positives), distinct=len(distinct))


def bench_dedup(n_base: int = 6000) -> list[dict]:
    config = MinhashConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs, pairs = planted_corpus(root, n_base)
        signatures = MinhashSignatures(config)
        texts = {d["id"]: (d["text"], d["lang"]) for d in docs}
        jaccard = {}
        for a, b, _ in pairs:
            sa = set(signatures.shingles(*texts[a]).tolist())
            sb = set(signatures.shingles(*texts[b]).tolist())
            jaccard[(a, b)] = len(sa & sb) / len(sa | sb)
        our_seconds, our_removed = ours(root, docs)
        their_seconds, their_removed = datatrove(root)
        shutil.rmtree(root / "datatrove", ignore_errors=True)
    ours_score, theirs_score = score(docs, pairs, our_removed, jaccard), score(docs, pairs, their_removed, jaccard)
    by_kind = collections.defaultdict(list)
    for a, b, kind in pairs:
        by_kind[kind].append((jaccard[(a, b)], a in our_removed or b in our_removed))
    kinds = ", ".join(f"{kind} J~{sum(j for j, _ in v) / len(v):.2f} removed {sum(r for _, r in v) / len(v):.0%}"
                      for kind, v in sorted(by_kind.items()))
    n = len(docs)
    return [
        dict(name="dedup_docs_per_s_per_core", value=n / our_seconds, baseline=n / their_seconds,
             ratio=their_seconds / our_seconds, baseline_name="datatrove MinHash signature+buckets+cluster"),
        dict(name="dedup_recall_at_j0.8", value=ours_score["recall"], baseline=theirs_score["recall"],
             baseline_name=f"datatrove; {ours_score['positives']} planted pairs at J>=0.8"),
        dict(name="dedup_false_removal_rate", value=ours_score["false_removal"],
             baseline=theirs_score["false_removal"], baseline_name=f"datatrove; {ours_score['distinct']} docs"),
        dict(name="dedup_planted_pairs", value=len(pairs), notes=kinds),
    ]
