"""`mmcorpus build`: curate every input file into the pool (once), then mix and shard one phase.

Ray stages, each one task per unit and resumable by completion markers:
    curate   one task per input file: read -> lid -> quality        -> <out>/curated/<source>/part-NNNNN.parquet
    dedup-*  signatures per curated file, pairs per band, clusters   -> <out>/dedup/<config>/ (pipeline/dedup.py)
    pool     one task per curated file: dedup -> tokenize           -> <out>/pool/<source>/<lang>/part-NNNNN.parquet
    mix      one task per pool file: chunk + sample + place          -> <out>/<phase>/_placed/...
    shard    one task per shard: gather, shuffle by hash, write      -> <out>/<phase>/shards/shard-NNNNN.parquet
then the manifest and the DuckDB catalog. Every task writes its stats and rejects next to its outputs.
"""

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from manifests import catalog
from manifests.schemas import CURATED, PLACED, POOL, REJECTS, STATS
from manifests.writer import ParquetSink, write_parquet, write_text
from pipeline.config import (
    DEDUP_FILE,
    LID_FILE,
    QUALITY_FILE,
    ConfigError,
    PhaseConfig,
    SourceConfig,
    SourcesConfig,
    load_dedup,
    load_lid,
    load_quality,
)
from pipeline.dedup import removed_rows, run_dedup
from pipeline.runner import Runner, Task
from stages.assets import AssetSpec
from stages.base import Document, Stage
from stages.dedup import DedupFilter, MinhashConfig
from stages.languages import base_language
from stages.lid import LanguageId
from stages.mix import SampleChunks, plan_mixture, unit_hash
from stages.quality import QualityFilter
from stages.shards import write_shard
from stages.sources import READERS, SourceReader
from stages.tokenize import Gemma2Tokenizer, Tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    out: Path
    phase: PhaseConfig
    sources: SourcesConfig
    tokenizers: dict[str, AssetSpec]
    seed: int = 0
    workers: int = 2
    budget_tokens: float | None = None  # None: the phase's available tokens (one pass over the pool)
    ray_address: str | None = None
    lid_config: Path = LID_FILE
    quality_config: Path = QUALITY_FILE
    dedup_config: Path = DEDUP_FILE


def make_reader(source: SourceConfig, tokenizers: dict[str, AssetSpec]) -> SourceReader:
    reader = READERS[source.name]
    options = dict(source.options)
    role = options.pop("tokenizer", reader.tokenizer_role)
    if role is not None:
        if role not in tokenizers:
            raise ConfigError(f"source {source.name}: tokenizer {role!r} is not in the tokenizers config "
                              f"(known: {', '.join(tokenizers)})")
        options["tokenizer"] = tokenizers[role]
    return reader(source.path, **options)


def write_task_records(out: Path, stage_group: str, source: str, part: str, stages: list[Stage]) -> None:
    """Stats and rejects of one task, named after it, so that reruns overwrite rather than add."""
    stats = [row | {"task": f"{source}/{part}"} for stage in stages for row in stage.stats.rows()]
    rejects = [asdict(reject) for stage in stages for reject in stage.rejects]
    write_parquet(out / "stats" / stage_group / source / f"{part}.parquet", stats, STATS)
    write_parquet(out / "rejects" / stage_group / source / f"{part}.parquet", rejects, REJECTS)


@cache
def curation_configs(lid: Path, quality: Path) -> tuple:
    """Loaded once per worker process: the quality config holds FineWeb2's 1,929 language rows."""
    return load_lid(lid, quality), load_quality(quality)


def curate_file(out: Path, source: SourceConfig, tokenizers: dict[str, AssetSpec], relative: str, part: str,
                lid_config: Path, quality_config: Path) -> dict:
    reader = make_reader(source, tokenizers)
    lid, quality = curation_configs(lid_config, quality_config)
    stages: list[Stage] = [LanguageId(lid), QualityFilter(quality)]
    docs: Iterator[Document] = reader.run([relative])
    for stage in stages:
        docs = stage.run(docs)
    with ParquetSink(out / "curated" / source.name / f"{part}.parquet", CURATED) as sink:
        for doc in docs:
            meta = doc.metadata
            sink.write(dict(id=doc.id, text=doc.text, source=meta["source"], lang=meta["lang"],
                            lang_score=meta.get("lang_score"), url=meta.get("url"), quality=meta.get("quality"),
                            origin=meta["origin"], extra=json.dumps(meta.get("extra") or {}, default=str)))
    write_task_records(out, "curate", source.name, part, [reader, *stages])
    return {"input": relative, "docs": sink.count}


def _curated_docs(path: Path) -> Iterator[Document]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["id", "text", "source", "lang",
                                                                             "quality", "origin"]):
        for row in batch.to_pylist():
            yield Document(text=row.pop("text"), id=row.pop("id"), metadata=row)


def pool_file(out: Path, source: str, part: str, tokenizer: AssetSpec, dedup: MinhashConfig | None) -> dict:
    removed = removed_rows(out, dedup, source, part) if dedup else {}
    stages: list[Stage] = [DedupFilter(removed), Tokenize(Gemma2Tokenizer(tokenizer))]
    docs = _curated_docs(out / "curated" / source / f"{part}.parquet")
    for stage in stages:
        docs = stage.run(docs)
    sinks: dict[str, ParquetSink] = {}
    try:
        for doc in docs:
            lang = doc.metadata["lang"]
            if lang not in sinks:
                sinks[lang] = ParquetSink(out / "pool" / source / lang / f"{part}.parquet", POOL)
            ids = doc.metadata["input_ids"]
            sinks[lang].write(dict(id=doc.id, source=source, lang=lang, quality=doc.metadata["quality"],
                                   n_tokens=len(ids), input_ids=ids, origin=doc.metadata["origin"]))
    finally:
        for sink in sinks.values():
            sink.close()
    write_task_records(out, "pool", source, part, stages)
    tokens = sum(stages[-1].stats.tokens.values())
    return {"docs": sum(sink.count for sink in sinks.values()), "tokens": tokens, "langs": sorted(sinks)}


def mix_file(out: Path, phase_id: str, pool_path: str, ratios: dict, seed: int, seq_len: int, min_chunk: int,
             min_quality: float, n_shards: int, bos: int, eos: int, key: str) -> dict:
    sampler = SampleChunks(ratios, seed, seq_len, min_chunk, min_quality, bos, eos)
    docs = (
        Document(text="", id=row.pop("id"), metadata=row)
        for batch in pq.ParquetFile(pool_path).iter_batches(batch_size=512)
        for row in batch.to_pylist()
    )
    with ParquetSink(out / phase_id / "_placed" / f"{key}.parquet", PLACED) as sink:
        for doc in sampler.run(docs):
            meta = doc.metadata
            for epoch, index, chunk in meta["chunks"]:
                place = unit_hash(seed, "place", doc.id, epoch, index)
                sink.write(dict(shard=place % n_shards, place=place, input_ids=chunk, doc_id=doc.id, chunk=index,
                                source=meta["source"], lang=meta["lang"], epoch=epoch))
    write_task_records(out / phase_id, "mix", *key.split("__", 1), [sampler])
    return {"docs": sum(sampler.stats.kept.values()), "tokens": sum(sampler.stats.tokens.values())}


def available_tokens(out: Path, phase: PhaseConfig) -> tuple[dict[tuple[str, str], int], list[dict]]:
    """Eligible pool tokens per (source, lang), and stats rows counting the pool docs outside the phase."""
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT source, lang, count(*), sum(n_tokens) FROM read_parquet(?) GROUP BY 1, 2 ORDER BY 1, 2",
            [str(out / "pool" / "*" / "*" / "*.parquet")],
        ).fetchall()
        per_doc = con.execute(
            """SELECT source, lang, sum(n_tokens) FROM read_parquet(?)
               WHERE quality >= ? AND n_tokens + 2 >= ? GROUP BY 1, 2""",
            [str(out / "pool" / "*" / "*" / "*.parquet"), phase.min_quality, phase.min_chunk_tokens],
        ).fetchall()
    eligible = {(s, lang): int(n) for s, lang, n in per_doc}
    available, outside = {}, []
    for source, lang, docs, _ in rows:
        if base_language(lang) in phase.languages:
            if (source, lang) in eligible:
                available[(source, lang)] = eligible[(source, lang)]
        else:
            outside.append(dict(stage="mix", source=source, lang=lang, reason=None, read=docs, kept=0,
                                rejected=docs, tokens=0, seconds=0.0, task="plan"))
            outside.append(dict(stage="mix", source=source, lang=lang, reason="mix:other_language", read=0,
                                kept=0, rejected=docs, tokens=0, seconds=0.0, task="plan"))
    return available, outside


def check_same_plan(phase_dir: Path, plan: dict) -> None:
    """Resuming a phase is only safe with the same plan: refuse to mix two plans' tasks in one output."""
    path = phase_dir / "plan.json"
    text = json.dumps(plan, sort_keys=True, default=str)
    if path.exists() and path.read_text() != text:
        raise RuntimeError(f"{phase_dir} was mixed with another plan (seed, budget, config or pool changed): "
                           "remove it or use a new --out")
    write_text(path, text)


def build(settings: BuildSettings) -> dict:
    started = time.time()
    out, phase = settings.out, settings.phase
    out.mkdir(parents=True, exist_ok=True)
    gemma = Gemma2Tokenizer(settings.tokenizers["gemma2"])  # fail before any work if an asset is missing
    lid, _ = curation_configs(settings.lid_config, settings.quality_config)
    lid.model.check()
    load_dedup(settings.dedup_config)
    inputs = {name: make_reader(source, settings.tokenizers).list_files()
              for name, source in settings.sources.sources.items()}
    for name, files in inputs.items():
        log.info("%s: %d input file(s) under %s", name, len(files), settings.sources.sources[name].path)
    timings = {}
    with Runner(out, settings.workers, settings.ray_address) as runner:
        curate_tasks = [
            Task(f"{name}__part-{i:05d}", curate_file,
                 dict(out=out, source=settings.sources.sources[name], tokenizers=settings.tokenizers,
                      relative=relative, part=f"part-{i:05d}", lid_config=settings.lid_config,
                      quality_config=settings.quality_config))
            for name, files in inputs.items() for i, relative in enumerate(files)
        ]
        t0 = time.time()
        curated = runner.run("curate", curate_tasks)
        for task in curate_tasks:
            if curated[task.key]["input"] != task.kwargs["relative"]:
                raise RuntimeError(f"{out} was built from other inputs ({curated[task.key]['input']} is now "
                                   f"{task.kwargs['relative']}): use a new --out")
        timings["curate"] = time.time() - t0
        t0 = time.time()
        dedup, kinds = load_dedup(settings.dedup_config)
        parts = [(task.kwargs["source"].name, task.kwargs["part"]) for task in curate_tasks]
        dedup_summary = run_dedup(runner, out, parts, dedup, kinds) if kinds else {}
        log.info("dedup: %s", ", ".join(f"{k} {v:,}" for k, v in dedup_summary.items()) or "off")
        timings["dedup"] = time.time() - t0
        t0 = time.time()
        runner.run("pool", [
            Task(task.key, pool_file, dict(out=out, source=task.kwargs["source"].name, part=task.kwargs["part"],
                                           tokenizer=settings.tokenizers["gemma2"],
                                           dedup=dedup if kinds else None))
            for task in curate_tasks
        ])
        timings["pool"] = time.time() - t0

        available, outside = available_tokens(out, phase)
        if not available:
            raise RuntimeError(f"no pool tokens in the phase-{phase.number} language set under {out / 'pool'}")
        budget = settings.budget_tokens or float(sum(available.values()))
        plan = plan_mixture(available, phase.source_shares, phase.temperature, budget, phase.max_epochs)
        shard_tokens = settings.sources.shard_tokens or phase.shard_tokens
        n_shards = max(1, math.ceil(sum(row.target_tokens for row in plan) / shard_tokens))
        ratios = {(row.source, row.lang): row.epochs for row in plan}
        phase_dir = out / phase.id
        check_same_plan(phase_dir, dict(seed=settings.seed, budget=budget, n_shards=n_shards,
                                        phase=phase.to_dict(), ratios=sorted(map(list, ratios.items()))))
        write_parquet(phase_dir / "stats" / "mix" / "plan.parquet", outside, STATS)
        pool_files = sorted((out / "pool").glob("*/*/*.parquet"))
        t0 = time.time()
        runner.run(f"{phase.id}-mix", [
            Task(key, mix_file, dict(out=out, phase_id=phase.id, pool_path=str(path), ratios=ratios,
                                     seed=settings.seed, seq_len=phase.seq_len, min_chunk=phase.min_chunk_tokens,
                                     min_quality=phase.min_quality, n_shards=n_shards, bos=gemma.bos_id,
                                     eos=gemma.eos_id, key=key))
            for path in pool_files
            if base_language(path.parent.name) in phase.languages
            for key in [f"{path.parent.parent.name}__{path.parent.name}__{path.stem}"]
        ])
        timings["mix"] = time.time() - t0
        t0 = time.time()
        placed = str(phase_dir / "_placed" / "*.parquet")
        shards = runner.run(f"{phase.id}-shard", [
            Task(f"shard-{s:05d}", write_shard,
                 dict(placed_glob=placed, shard=s, path=phase_dir / "shards" / f"shard-{s:05d}.parquet"))
            for s in range(n_shards)
        ])
        timings["shard"] = time.time() - t0
    run_info = dict(seed=settings.seed, budget_tokens=budget, n_shards=n_shards, shard_tokens=shard_tokens,
                    tokenizer=settings.tokenizers["gemma2"].path, tokenizer_sha256=gemma.sha256,
                    phase=phase.to_dict(), sources=settings.sources.to_dict(), timings=timings,
                    started=started, seconds=time.time() - started)
    catalog.write_manifest(out, phase, plan, [shards[k] for k in sorted(shards)], run_info)
    shutil.rmtree(phase_dir / "_placed", ignore_errors=True)
    catalog.build_catalog(out)
    return run_info
