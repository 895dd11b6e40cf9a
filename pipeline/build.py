"""`mmcorpus build`: curate every input file into the pool (once), then mix and shard one phase.

Ray stages, each one task per unit and resumable by completion markers:
    curate   one task per input file: read -> lid -> quality        -> <out>/curated/<source>/part-NNNNN.parquet
    dedup-*  signatures per curated file, pairs per band, clusters   -> <out>/dedup/<config>/ (pipeline/dedup.py)
    pool     one task per curated file: dedup -> tokenize           -> <out>/pool/<source>/<lang>/part-NNNNN.parquet
    <phase>-threshold, -mix, -shard: plan, select and place chunks, write shards (pipeline/mixing.py)
                                                                     -> <out>/<phase>/shards/shard-NNNNN.parquet
then the manifest and the DuckDB catalog. Every task writes its stats and rejects next to its outputs.
"""

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import pyarrow.parquet as pq

from manifests import catalog
from manifests.schemas import CURATED, POOL
from manifests.writer import ParquetSink, write_parquet, write_task_records
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
from pipeline.mixing import mix_phase
from pipeline.runner import Runner, Task
from stages.assets import AssetSpec
from stages.base import Document, Stage, failed_file
from stages.dedup import DedupFilter, MinhashConfig
from stages.lid import LanguageId
from stages.quality import QualityFilter
from stages.sources import READERS, SourceReader
from stages.tokenize import Gemma2Tokenizer, Tokenize, load_gemma2

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
    retries: int = 1  # a task that raises runs again this many times; an input file then is quarantined


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


def quarantine_input(out: Path, source: str, relative: str, part: str, error: str) -> dict:
    """A curation task that kept failing: its input file becomes one reject, its outputs empty."""
    write_parquet(out / "curated" / source / f"{part}.parquet", [], CURATED)
    write_task_records(out, "curate", source, part, [failed_file(source, relative, "read:task_failed", error)])
    log.warning("%s: quarantined %s: %s", source, relative, error)
    return {"input": relative, "docs": 0, "quarantined": error}


def _curated_docs(path: Path) -> Iterator[Document]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["id", "text", "source", "lang",
                                                                             "quality", "origin"]):
        for row in batch.to_pylist():
            yield Document(text=row.pop("text"), id=row.pop("id"), metadata=row)


def pool_file(out: Path, source: str, part: str, tokenizer: AssetSpec, dedup: MinhashConfig | None) -> dict:
    removed = removed_rows(out, dedup, source, part) if dedup else {}
    stages: list[Stage] = [DedupFilter(removed), Tokenize(load_gemma2(tokenizer))]
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


def build(settings: BuildSettings) -> dict:
    started = time.time()
    out, phase = settings.out, settings.phase
    out.mkdir(parents=True, exist_ok=True)
    gemma = Gemma2Tokenizer(settings.tokenizers["gemma2"])  # fail before any work if an asset is missing
    lid, _ = curation_configs(settings.lid_config, settings.quality_config)
    lid.model.check()
    load_dedup(settings.dedup_config)
    readers = {name: make_reader(source, settings.tokenizers) for name, source in settings.sources.sources.items()}
    inputs = {name: reader.list_files() for name, reader in readers.items()}
    for name, files in inputs.items():
        log.info("%s: %d input file(s) under %s", name, len(files), settings.sources.sources[name].path)
    timings = {}
    with Runner(out, settings.workers, settings.ray_address, retries=settings.retries) as runner:
        curate_tasks = [
            Task(f"{name}__part-{i:05d}", curate_file,
                 dict(out=out, source=settings.sources.sources[name], tokenizers=settings.tokenizers,
                      relative=relative, part=f"part-{i:05d}", lid_config=settings.lid_config,
                      quality_config=settings.quality_config),
                 on_failure=partial(quarantine_input, out, name, relative, f"part-{i:05d}"),
                 size=readers[name].size(relative))
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
                                           dedup=dedup if kinds else None),
                 size=(out / "curated" / task.kwargs["source"].name / f"{task.kwargs['part']}.parquet").stat().st_size)
            for task in curate_tasks
        ])
        timings["pool"] = time.time() - t0

        t0 = time.time()
        shard_tokens = settings.sources.shard_tokens or phase.shard_tokens
        plan, shards, mix_settings = mix_phase(runner, out, phase, settings.seed, settings.budget_tokens,
                                               shard_tokens, gemma.bos_id, gemma.eos_id)
        timings["mix"] = time.time() - t0
    run_info = dict(mix_settings, tokenizer=settings.tokenizers["gemma2"].path, tokenizer_sha256=gemma.sha256,
                    phase=phase.to_dict(), sources=settings.sources.to_dict(), timings=timings,
                    dedup=dedup_summary, started=started, seconds=time.time() - started)
    catalog.write_manifest(out, phase, plan, [shards[k] for k in sorted(shards)], run_info)
    shutil.rmtree(out / phase.id / "_placed", ignore_errors=True)
    catalog.build_catalog(out)
    return run_info
