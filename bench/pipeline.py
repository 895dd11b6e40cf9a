"""End to end against datatrove, tokenization against the raw libraries, mixing against a disk copy, scale-out
on Ray with 1 and 2 workers, and peak memory per stage for two input sizes.

The input is generated at run time (fixed seed) as FineWeb2 Parquet in its upstream layout: web-page-like
documents of UDHR paragraphs from the bundled samples, in 16 languages and ten scripts.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import say
from bench.data import documents
from manifests.layout import Layout
from pipeline.config import load_recipe
from pipeline.sections import LID, PHASES, QUALITY, SOURCES, TOKENIZERS
from stages.paths import PROJECT_ROOT as ROOT
from stages.tokenize import Gemma2Tokenizer, Tokenize


def generate_input(root: Path, megabytes: float, files: int = 40, seed: int = 0, shard_tokens: int = 1 << 20,
                   independent: bool = False, duplicates: float = 0.0) -> dict:
    """FineWeb2-layout Parquet of about `megabytes` of text, and a sources YAML pointing at it."""
    per_doc = 3_300  # bytes, about what bench.data.documents makes
    docs = documents(int(megabytes * 1e6 / per_doc), seed, independent, duplicates)
    by_lang: dict[str, list] = {}
    for doc in docs:
        by_lang.setdefault(doc.metadata["lang"], []).append(doc)
    # `files` in all, shared out over the languages (each has one at least): whole files per language would
    # make the count per MB jump with the size (19 languages: 19 files at 16 MB, 494 at 256 MB, not 32 and 512)
    langs = sorted(by_lang)
    per_lang = [max(1, files // len(langs) + (i < files % len(langs))) for i in range(len(langs))]
    size = 0
    for lang, lang_files in zip(langs, per_lang, strict=True):
        language, script = lang.split("_")
        lang_docs = by_lang[lang]
        for part in range(lang_files):
            chunk = lang_docs[part::lang_files]
            path = root / "fineweb2" / "data" / lang / "train" / f"000_{part:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({
                "text": [d.text for d in chunk], "id": [f"<urn:bench:{d.id}>" for d in chunk],
                "language": [language] * len(chunk), "language_script": [script] * len(chunk),
                "language_score": [0.99] * len(chunk),
            }), path)
            size += sum(len(d.text.encode()) for d in chunk)
    (root / "sources.yaml").write_text(f"sources:\n  fineweb2:\n    path: {root / 'fineweb2'}\n"
                                       f"shard_tokens: {shard_tokens}\n")
    return {"docs": len(docs), "megabytes": size / 1e6, "files": sum(per_lang)}


def build(root: Path, out: Path, workers: int) -> dict:
    """A phase-1 build in its own process and embedded Ray; its run information from the manifest (per-stage
    `timings`, and per Ray stage the costs in `stages`)."""
    started = say(f"building phase 1 of {root.name} on {workers} worker(s)")
    subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--workers", str(workers),
                    "--sources", str(root / "sources.yaml"), "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    run = pq.read_table(out / Layout.manifest("phase1", "run")).to_pylist()[0]
    say(f"built in {time.perf_counter() - started:.0f} s")
    return json.loads(run["config"])


def curation_seconds(timings: dict) -> float:
    return timings["curate"] + timings["dedup"] + timings["pool"]


def datatrove_end_to_end(root: Path, work: Path) -> float:
    """datatrove's stock steps doing the same work on one core: read, LID, Gopher and FineWeb quality,
    MinHash dedup, Gemma 2 tokenization (its tokenizer.json)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import (
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.lid import FT176LID

    from bench.dedup import SpaceTokenizer, quiet_datatrove

    work.mkdir(parents=True, exist_ok=True)
    model_path = str(LID.load().model.check())

    class LocalFT176(FT176LID):
        """fastText lid.176 from the local file `make setup` fetched (datatrove would download it)."""

        @property
        def model(self) -> object:
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(model_path)
            return self._model

    def language_filter() -> LanguageFilter:
        step = LanguageFilter(languages=None, language_threshold=0.5)
        step.model = LocalFT176()
        return step

    words = SpaceTokenizer()
    config = MinhashConfig(hash_config=HashConfig(precision=64))
    quality = QUALITY.load()
    folders = sorted((root / "fineweb2" / "data").glob("*/train"))
    files = len(list((root / "fineweb2" / "data").glob("*/train/*.parquet")))

    def filters(lang: str) -> list:
        """FineWeb2's per-language configuration of datatrove's filters, as its own pipeline sets them."""
        row = quality.thresholds(lang)
        return [
            language_filter(),
            GopherRepetitionFilter(dup_para_frac=0, dup_line_char_frac=0, dup_para_char_frac=0,
                                   dup_line_frac=row.dup_line_frac, top_n_grams=row.top_n_grams,
                                   dup_n_grams=row.dup_n_grams, language=words),
            FineWebQualityFilter(short_line_thr=999, char_duplicates_ratio=0.1, line_punct_thr=row.line_punct_thr,
                                 new_line_ratio=row.new_line_ratio, language=words),
            GopherQualityFilter(min_avg_word_length=row.min_avg_word_length,
                                max_avg_word_length=row.max_avg_word_length, stop_words=row.stopwords,
                                max_non_alpha_words_ratio=row.max_non_alpha_words_ratio, min_stop_words=2,
                                language=words),
        ]

    def run(pipeline: list, tasks: int, name: str) -> None:
        with quiet_datatrove(work / "datatrove.log"):
            LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                                  logging_dir=str(work / "logs" / name)).run()

    start = say(f"datatrove's stock pipeline on {root.name}, 1 worker")
    for folder in folders:
        lang = folder.parent.name
        run([ParquetReader(str(folder)), *filters(lang),
             ParquetWriter(str(work / "filtered"), output_filename=f"{lang}-${{rank}}.parquet")],
            len(list(folder.glob("*.parquet"))), f"filter-{lang}")
    filtered = str(work / "filtered")
    run([ParquetReader(filtered), MinhashDedupSignature(str(work / "sig"), config=config, language=words)], files,
        "sig")
    run([MinhashDedupBuckets(str(work / "sig"), str(work / "buckets"), config=config)], config.num_buckets, "buckets")
    run([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1, "cluster")
    run([ParquetReader(filtered), MinhashDedupFilter(str(work / "remove")),
         DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=TOKENIZERS.load()["gemma2_json"].check()
                           .as_posix())], files, "tokenize")
    return time.perf_counter() - start


def bench_tokenization(n: int = 6_000) -> dict:
    """Our Tokenize stage against the faster of raw SentencePiece `encode` and raw `tokenizers` `encode_batch`
    on the same texts and the same cores (all of them; the pipeline itself runs one thread per Ray task)."""
    import os

    import sentencepiece
    from tokenizers import Tokenizer

    specs = TOKENIZERS.load()
    docs = documents(n, seed=2)
    texts = [d.text for d in docs]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(specs["gemma2"].check()))
    hf = Tokenizer.from_file(str(specs["gemma2_json"].check()))
    timings = {}
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    tokens = sum(map(len, sp.encode(texts, num_threads=cores)))
    timings["sentencepiece"] = time.perf_counter() - start
    start = time.perf_counter()
    hf.encode_batch(texts, add_special_tokens=False)
    timings["tokenizers"] = time.perf_counter() - start
    stage = Tokenize(Gemma2Tokenizer(specs["gemma2"], threads=cores))
    start = time.perf_counter()
    for _ in stage.run(docs):
        pass
    ours = time.perf_counter() - start
    fastest = min(timings, key=timings.get)
    return dict(name="tokenize_tokens_per_s", value=tokens / ours, baseline=tokens / timings[fastest],
                ratio=timings[fastest] / ours,
                baseline_name=f"raw {fastest} on {cores} cores "
                              f"(sentencepiece {tokens / timings['sentencepiece']:,.0f}, "
                              f"tokenizers encode_batch {tokens / timings['tokenizers']:,.0f} tokens/s)")


def bench_tokenizer_pieces(n: int = 3_000, rounds: int = 3) -> list[dict]:
    """Gemma 2 by cached pieces (stages/pieces.py, as the pool's tasks encode) against `sp.encode`, both on one
    thread, in batches of 256 as the Tokenize stage sends them: MB/s per core on the bench corpus, then per script.
    CPU seconds of this process (it is single-threaded), the better of `rounds` interleaved runs, each starting
    from an empty table; the ids are checked equal."""
    import sentencepiece

    from stages.text import script_of

    processor = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZERS.load()["gemma2"].check()))
    tokenizer = Gemma2Tokenizer(TOKENIZERS.load()["gemma2"])
    tokenizer.encode_batch(["Numba loads its kernels once per worker"])
    docs = documents(n, seed=2)
    by_script: dict[str, list[str]] = {"all": [doc.text for doc in docs]}
    for doc in docs:
        by_script.setdefault(script_of(doc.metadata["lang"]), []).append(doc.text)
    rows = []
    for script, texts in by_script.items():
        batches = [texts[i:i + 256] for i in range(0, len(texts), 256)]
        megabytes = sum(len(text.encode()) for text in texts) / 1e6
        theirs, ours = [], []
        for _ in range(rounds):
            tokenizer.pieces.clear()
            start = time.process_time()
            expected = [processor.encode(batch, num_threads=1) for batch in batches]
            theirs.append(time.process_time() - start)
            start = time.process_time()
            got = [tokenizer.encode_batch(batch) for batch in batches]
            ours.append(time.process_time() - start)
            if got != expected:
                raise AssertionError(f"cached pieces changed the ids of {script} text")
        name = "tokenize_pieces_mb_per_s_per_core" + ("" if script == "all" else f"_{script}")
        rows.append(dict(name=name, value=megabytes / min(ours), baseline=megabytes / min(theirs),
                         ratio=min(theirs) / min(ours),
                         baseline_name=f"sp.encode, 1 thread, {megabytes:.1f} MB of {script} bench text, ids equal"))
    return rows


def bench_mixing(out: Path, timings: dict) -> dict:
    """Tokens written per second by mixing + sharding, against copying the same bytes with a plain copy."""
    layout = Layout(out)
    shards = [out / name for name in layout.glob(Layout.shards_glob("phase1"))]
    tokens = sum(row["tokens"] for row in pq.read_table(out / Layout.manifest("phase1", "shards")).to_pylist())
    copy_target = out / "copy"
    copy_target.mkdir()
    start = time.perf_counter()
    for path in (out / name for name in layout.glob(Layout.POOL_GLOB)):
        shutil.copyfile(path, copy_target / f"{path.parent.parent.name}-{path.parent.name}-{path.name}")
    copied = time.perf_counter() - start
    pool_bytes = sum(p.stat().st_size for p in copy_target.iterdir())
    shard_bytes = sum(p.stat().st_size for p in shards)
    mix_rate = shard_bytes / timings["mix"]
    copy_rate = pool_bytes / copied
    return dict(name="mix_shard_tokens_per_s", value=tokens / timings["mix"], baseline=copy_rate / 1e6,
                ratio=mix_rate / copy_rate, baseline_name=f"plain copy MB/s; mixing wrote {mix_rate / 1e6:.1f} MB/s "
                                                          f"of shards (ratio = shard MB/s over copy MB/s)")


def bench_mix_task(out: Path) -> dict:
    """Mixing and sharding as one worker runs them, in this process without Ray: every pool file through
    `mix_files` (each document one whole epoch plus half of a second), then `write_shard` per shard, after one
    pool file's worth of warming up."""
    from pipeline.mixing import mix_files
    from stages.mix import Selection
    from stages.shards import write_shard

    layout = Layout(out)
    pools = layout.glob(Layout.POOL_GLOB)
    plan = {(pool["source"], pool["lang"]): Selection(0.0, {1: (1, 2**63)}) for pool in map(Layout.POOL.parse, pools)}
    # a worker runs many such tasks: time it warm (its first one also pays for Arrow's memory pool growing)
    rules = PHASES.load().phase(1).chunking
    mix_files(layout, "bench-warm", pools[:1], plan, seed=0, rules=rules, n_shards=8, per_group=1, bos=2, eos=1,
              key="warm")
    start = time.perf_counter()
    mixed = mix_files(layout, "bench-mix", pools, plan, seed=0, rules=rules, n_shards=8, per_group=1, bos=2, eos=1,
                      key="all")
    mixing = time.perf_counter() - start
    placed = Layout.PLACED_IN_SHARD.by(layout.glob(Layout.PLACED_IN_SHARD.glob(phase="bench-mix")), "shard")
    written = [write_shard(layout, files, Layout.shard("bench-mix", shard)) for shard, files in placed.items()]
    seconds = time.perf_counter() - start
    assert sum(shard["tokens"] for shard in written) == mixed["tokens"]
    tokens = mixed["tokens"]
    shard_bytes = sum(shard["bytes"] for shard in written)
    return dict(name="mix_task_tokens_per_s", value=tokens / seconds,
                notes=f"one worker without Ray, {tokens:,} tokens: choosing and placing chunks "
                      f"{tokens / mixing / 1e6:.1f}M tokens/s, writing 8 shards "
                      f"{tokens / (seconds - mixing) / 1e6:.1f}M ({shard_bytes / tokens:.2f} bytes per token)")


def peak_memory(stage: str, root: Path, out: Path) -> int:
    """Peak RSS (KiB) of one stage's task on one input file, in a fresh process."""
    code = f"from bench.pipeline import run_stage; run_stage({stage!r}, {str(root)!r}, {str(out)!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1])


def peak_rss_kib() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])


def run_stage(stage: str, root: str, out: str) -> None:
    """One task of a stage, in-process, on one input file; prints the peak RSS (KiB) while it ran. The peak is
    reset first: Linux carries a parent's peak into a child across fork and exec."""
    from pipeline.build import CurationConfig, curate_file, part_name, pool_file
    from pipeline.dedup import signature_file
    from pipeline.mixing import mix_files
    from stages.dedup import MinhashConfig
    from stages.mix import Selection

    out_path = Path(out)
    options = SOURCES.load(Path(root) / "sources.yaml").sources["fineweb2"]
    relative = "data/deu_Latn/train/000_00000.parquet"
    target = Layout(Path(out) / "memory")
    curated = next((out_path / "curated" / "fineweb2").glob("*.parquet"))
    if stage in ("dedup", "tokenize"):
        shutil.copytree(out_path / "curated", Path(target.root) / "curated", dirs_exist_ok=True)
    pool = max(out_path.glob(Layout.POOL_GLOB), key=lambda p: p.stat().st_size)
    if stage == "mix":
        shutil.copytree(out_path / "pool", Path(target.root) / "pool", dirs_exist_ok=True)
    recipe = load_recipe()  # LID's upstream thresholds come from the quality section
    curation = CurationConfig(recipe.lid, recipe.quality)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    if stage == "curate":
        curate_file(target, "fineweb2", options, TOKENIZERS.load(), relative, part_name(relative), curation)
    elif stage == "dedup":
        signature_file(target, "fineweb2", curated.stem, MinhashConfig())
    elif stage == "tokenize":
        pool_file(target, "fineweb2", curated.stem, TOKENIZERS.load()["gemma2"], None)
    elif stage == "mix":
        lang = pool.parent.name
        plan = {("fineweb2", lang): Selection(0.0, {1: (2, None)})}
        mix_files(target, "phase1", [str(pool.relative_to(out_path))], plan, seed=0,
                  rules=PHASES.load().phase(1).chunking, n_shards=4, per_group=1, bos=2, eos=1,
                  key=f"fineweb2__{lang}__{pool.stem}")
    print(peak_rss_kib())


def bench_small_files(work: Path, megabytes: float = 60) -> dict:
    """The same text as 2,000 files of ~30 KB and as 16 of ~3.5 MB (one per language), each built on 2 workers
    in this run: the small-file corpus's curation seconds (curate + dedup + pool) over the large-file one's."""
    timings = {}
    for name, files in (("large", 16), ("small", 2_000)):
        root = work / f"files-{name}"
        generated = generate_input(root, megabytes, files=files, seed=3)
        timings[name] = build(root, root / "out", workers=2)["timings"]
    small, large = curation_seconds(timings["small"]), curation_seconds(timings["large"])
    stages = "; ".join(f"{stage} {timings['small'][stage]:.1f} / {timings['large'][stage]:.1f} s"
                       for stage in ("curate", "dedup", "pool", "mix"))
    return dict(name="small_files_time_ratio", value=small / large, baseline=1.3,
                notes=f"{generated['megabytes']:.0f} MB in {generated['files']:,} files against 16: curation "
                      f"{small:.1f} / {large:.1f} s ({stages}, small / large)")


def bench_pipeline(work: Path, megabytes: float = 120) -> list[dict]:
    small, large = work / "small", work / "large"
    say(f"generating {megabytes:.0f} MB of FineWeb2-layout input")
    generated = generate_input(large, megabytes)
    generate_input(small, megabytes / 4, seed=1)
    one = build(large, large / "out1", 1)["timings"]
    two = build(large, large / "out2", 2)["timings"]
    build(small, small / "out", 1)
    docs, mb = generated["docs"], generated["megabytes"]
    theirs = datatrove_end_to_end(large, work / "datatrove")
    ours = curation_seconds(one)
    stages = pq.read_table(large / "out1" / Layout.manifest("phase1", "stages")).to_pylist()
    pool_tokens = sum(row["tokens"] for row in stages if row["stage"] == "tokenize")
    results = [
        dict(name="e2e_docs_per_s_per_core", value=docs / ours, baseline=docs / theirs, ratio=theirs / ours,
             baseline_name=f"datatrove stock pipeline on the same {mb:.0f} MB ({docs:,} docs), 1 core"),
        dict(name="e2e_mb_per_s_per_core", value=mb / ours, baseline=mb / theirs, ratio=theirs / ours,
             baseline_name="read -> LID -> quality -> dedup -> tokenize -> pool"),
        dict(name="scale_out_2_workers", value=curation_seconds(one) / curation_seconds(two), baseline=1.0,
             baseline_name=f"curation {curation_seconds(one):.1f} s on 1 worker, {curation_seconds(two):.1f} s on 2"),
        dict(name="pool_tokens_per_input_mb", value=pool_tokens / mb,
             notes="Gemma 2 tokens the pool keeps per MB of upstream text (for `plan --cost`)"),
        bench_tokenization(),
        *bench_tokenizer_pieces(),
        bench_mixing(large / "out1", one),
        bench_mix_task(large / "out1"),
        bench_small_files(work),
    ]
    for stage in ("curate", "dedup", "tokenize", "mix"):
        rss = {name: peak_memory(stage, root, root / ("out1" if name == "large" else "out"))
               for name, root in (("small", small), ("large", large))}
        results.append(dict(name=f"peak_rss_mb_{stage}", value=rss["large"] / 1024, baseline=rss["small"] / 1024,
                            ratio=rss["large"] / rss["small"],
                            baseline_name="same task on an input file 4x smaller (ratio ~1: memory does not grow)"))
    return results
