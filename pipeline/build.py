"""`mmcorpus build`: curate every input file into the pool (once), then mix and shard one phase.

Ray stages, each one task per unit (pipeline/runner.py: fingerprinted markers, checksummed outputs):
    curate   one task per input file: read -> lid -> quality        -> curated/<source>/<part>.parquet
    dedup-*  signatures per curated file, then steps per hash partition -> dedup/<config>/ (pipeline/dedup.py)
    pool     one task per curated file: dedup -> tokenize           -> pool/<source>/<lang>/<part>.parquet
    <phase>-threshold, -mix, -shard: plan, select and place chunks, write shards (pipeline/mixing.py)
                                                                     -> <phase>/shards/shard-NNNNN.parquet
then the manifest, a row of the phase's run history and the DuckDB catalog (manifests/names.py names every
path). Every task writes its rejects next to its outputs; its counters travel in its marker. A part is named
after its input file, so adding or removing an input leaves the other parts' work in place.
"""

import datetime
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
import xxhash

from manifests import catalog, runs, store
from manifests.card import write_dataset_card
from manifests.layout import Layout
from manifests.schemas import CURATED, POOL, UPSTREAM
from manifests.writer import ParquetSink, write_parquet, write_task_records
from pipeline.config import ConfigError, Recipe, git_commit
from pipeline.dedup import read_removals, run_dedup
from pipeline.inputs import check_inputs
from pipeline.mixing import mix_phase
from pipeline.phases import PhaseConfig
from pipeline.runner import Runner, Task
from stages.assets import AssetSpec, file_digest
from stages.base import Document, Stage, failed_file
from stages.dedup import DedupFilter
from stages.lid import LanguageId, LidConfig
from stages.quality import QualityConfig, QualityFilter
from stages.sources import create_reader
from stages.sources.base import ReaderOptions
from stages.tokenize import Gemma2Tokenizer, Tokenize, load_gemma2

log = logging.getLogger(__name__)
# Distributions, as pip names them: fastText's module comes from fasttext-numpy2-wheel (the data cards name it)
PACKAGES = ("mmcorpus", "ray", "pyarrow", "duckdb", "fsspec", "sentencepiece", "tokenizers", "datatrove",
            "fasttext-numpy2-wheel", "numpy", "xxhash", "pyicu-wheels")


@dataclass(frozen=True)
class BuildSettings:
    out: str  # local folder or fsspec URL
    phase: PhaseConfig
    recipe: Recipe
    seed: int = 0
    workers: int = 2
    budget_tokens: float | None = None  # None: the phase's available tokens (one pass over the pool)
    ray_address: str | None = None
    retries: int = 1  # a task that raises runs again this many times; an input file then is quarantined
    task_memory: int | None = None  # bytes per task; None: from the cluster (Runner)
    keep_rejected_text: bool = False  # rejects keep the document's text (the `rejects` view's `text`)


@dataclass(frozen=True)
class CurationConfig:
    """What a curation task needs of the recipe (shared through Ray's object store, not shipped per task)."""

    lid: LidConfig
    quality: QualityConfig
    keep_text: bool = False  # rejects keep the text


def part_name(relative: str) -> str:
    """A curated part's name: readable, unique and stable for an input file, whatever the other inputs are."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", relative.replace("/", "__"))[-80:].lstrip("._-")
    return f"{slug}-{xxhash.xxh64_hexdigest(relative)[:8]}"


def curate_file(layout: Layout, source: str, options: ReaderOptions, tokenizers: dict[str, AssetSpec],
                relative: str, part: str, curation: CurationConfig) -> dict:
    reader = create_reader(source, options, tokenizers)
    stages: list[Stage] = [LanguageId(curation.lid), QualityFilter(curation.quality)]
    for stage in stages:
        stage.keep_text = curation.keep_text
    docs: Iterator[Document] = reader.run([relative])
    for stage in stages:
        docs = stage.run(docs)
    with ParquetSink(layout, Layout.curated(source, part), CURATED) as sink:
        for doc in docs:
            meta = doc.metadata
            sink.write(dict(id=doc.id, text=doc.text, source=meta["source"], lang=meta["lang"],
                            lang_score=meta.get("lang_score"), url=meta.get("url"), quality=meta.get("quality"),
                            origin=meta["origin"], **_upstream_fields(meta),
                            extra=json.dumps(meta.get("extra") or {}, default=str)))
    write_task_records(layout, "curate", source, part, [reader, *stages])
    return {"input": relative, "docs": sink.count}


def _upstream_fields(meta: dict) -> dict:
    upstream = meta.get("upstream") or {}
    return {name: upstream.get(name) for name, _ in UPSTREAM}


def quarantine_input(layout: Layout, source: str, relative: str, part: str, error: str) -> dict:
    """An input path that cannot be read (a dangling or looping link): one reject, empty outputs."""
    write_parquet(layout, Layout.curated(source, part), [], CURATED)
    write_task_records(layout, "curate", source, part, [failed_file(source, relative, "read:unreadable_path", error)])
    log.warning("%s: quarantined %s: %s", source, relative, error)
    return {"input": relative, "docs": 0, "quarantined": error}


def _curated_docs(layout: Layout, name: str) -> Iterator[Document]:
    with layout.open(name) as f:
        columns = ["id", "text", "source", "lang", "quality", "origin", *(name for name, _ in UPSTREAM)]
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=columns):
            for row in batch.to_pylist():
                yield Document(text=row.pop("text"), id=row.pop("id"), metadata=row)


def pool_file(layout: Layout, source: str, part: str, tokenizer: AssetSpec, removals: str | None,
              keep_text: bool = False) -> dict:
    removed, renamed = read_removals(layout, removals) if removals else ({}, {})
    stages: list[Stage] = [DedupFilter(removed, renamed), Tokenize(load_gemma2(tokenizer))]
    stages[0].keep_text = keep_text
    docs = _curated_docs(layout, Layout.curated(source, part))
    for stage in stages:
        docs = stage.run(docs)
    sinks: dict[str, ParquetSink] = {}
    try:
        for doc in docs:
            lang = doc.metadata["lang"]
            if lang not in sinks:
                sinks[lang] = ParquetSink(layout, Layout.pool(source, lang, part), POOL)
            ids = doc.metadata["input_ids"]
            sinks[lang].write(dict(id=doc.id, source=source, lang=lang, quality=doc.metadata["quality"],
                                   n_tokens=len(ids), input_ids=ids, origin=doc.metadata["origin"],
                                   **{name: doc.metadata[name] for name, _ in UPSTREAM}))
    finally:
        for sink in sinks.values():
            sink.close()
    write_task_records(layout, "pool", source, part, stages)
    tokens = sum(stages[-1].stats.tokens.values())
    return {"docs": sum(sink.count for sink in sinks.values()), "tokens": tokens, "langs": sorted(sinks)}


def curate_tasks(layout: Layout, recipe: Recipe, runner: Runner, keep_text: bool = False) -> list[Task]:
    """One task per input file of every source; a path that cannot be read becomes a quarantine task."""
    curation = runner.share(CurationConfig(recipe.lid, recipe.quality, keep_text))
    tasks = []
    for name, options in recipe.sources.sources.items():
        reader = create_reader(name, options, recipe.tokenizers)
        files = reader.list_files()
        log.info("%s: %d input file(s) under %s", name, len(files), options.path)
        for relative in files:
            part = part_name(relative)
            key = f"{name}__{part}"
            try:
                identity = reader.identity(relative)
            except OSError as error:
                detail = f"unreadable path: {' '.join(str(error).split())}"
                tasks.append(Task(key, quarantine_input, dict(layout=layout, source=name, relative=relative,
                                                              part=part, error=detail)))
                continue
            tasks.append(Task(key, curate_file,
                              dict(layout=layout, source=name, options=options, tokenizers=recipe.tokenizers,
                                   relative=relative, part=part, curation=curation),
                              identity=identity, size=identity["size"], label=f"{options.path}/{relative}"))
    return tasks


def build(settings: BuildSettings, layout: Layout | None = None) -> dict:
    """Build the phase; `layout`: the tree's, for a caller that reads it afterwards (the summary), which then keeps
    the build's one listing of the tree."""
    layout = layout or Layout(settings.out)
    try:  # fail before any work, as a recipe error, if a configured asset is missing or not the one named
        gemma = Gemma2Tokenizer(settings.recipe.tokenizers["gemma2"])
        settings.recipe.lid.model.check()
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None
    check_inputs(settings.recipe)  # and if a source of one's own matches no file or its mapping fits no record
    for name in settings.recipe.sources.sources:
        if name != "fineweb2" and not settings.phase.other_sources.get(name):
            log.warning("%s: %s gives it no share of the budget (other_sources): its documents are pooled, not "
                        "mixed; --set phases.%d.other_sources.%s=<weight> mixes them", name, settings.phase.id,
                        settings.phase.number, name)
    with layout.locked(f"mmcorpus build --phase {settings.phase.id}"):
        return _build(settings, layout, gemma)


def _build(settings: BuildSettings, layout: Layout, gemma: Gemma2Tokenizer) -> dict:
    started = time.time()
    recipe, phase = settings.recipe, settings.phase
    if removed := layout.remove_temporaries():
        log.info("removed %d temporary file(s) a killed run left", removed)
    built = runs.current_run(layout, phase.id)  # the build that wrote the phase's shards, if any
    timings = {}
    with Runner(layout, settings.workers, settings.ray_address, retries=settings.retries,
                task_memory=settings.task_memory) as runner:
        t0 = time.time()
        tasks = curate_tasks(layout, recipe, runner, settings.keep_rejected_text)
        runner.run("curate", tasks)
        timings["curate"] = time.time() - t0
        t0 = time.time()
        parts = sorted((task.kwargs["source"], task.kwargs["part"]) for task in tasks)
        dedup_summary, removals = run_dedup(runner, layout, parts, recipe.dedup)
        log.info("dedup: %s", ", ".join(f"{k} {v:,}" for k, v in dedup_summary.items()) or "nothing removed")
        timings["dedup"] = time.time() - t0
        t0 = time.time()
        runner.run("pool", [
            Task(f"{source}__{part}", pool_file,
                 dict(layout=layout, source=source, part=part, tokenizer=recipe.tokenizers["gemma2"],
                      removals=removed, keep_text=settings.keep_rejected_text),
                 inputs=(Layout.curated(source, part), *([removed] if removed else [])))
            for source, part in parts for removed in [removals.get((source, part))]
        ])
        timings["pool"] = time.time() - t0
        t0 = time.time()
        shard_tokens = recipe.sources.shard_tokens or phase.shard_tokens
        plan, shards, mix_settings, phase_stats = mix_phase(runner, layout, phase, settings.seed,
                                                            settings.budget_tokens, shard_tokens, gemma.bos_id,
                                                            gemma.eos_id)
        timings["mix"] = time.time() - t0
        finishing = store.COUNTS.snapshot()  # the driver's work after the shards: the run record's `finish` row
        if built and (line := runs.replacement(phase.id, built, settings.seed, phase.variant,
                                                  mix_settings["budget_tokens"])):
            log.info(line)
        # What the manifest and the catalog read besides the tasks: verified (or written again) first, and
        # nothing else left in the folders they read.
        ledger = runner.ledger
        runner.ensure(name for name in ledger.producers if Layout.read_after_build(name))
        layout.list_once()  # no task writes the tree from here on: the sweep, manifest, catalog and card list it once
        ledger.sweep(Layout.built_folders(phase.id))
        ledger.verify_earlier(lambda name: Layout.read_after_build(name) and not Layout.in_phase(name, phase.id))
        ran = dict(runner.ran)
        asked = Counter(stage for stage, _ in runner.tasks)
        reused = {stage: n - ran.get(stage, 0) for stage, n in sorted(asked.items()) if n > ran.get(stage, 0)}
        stage_costs = {stage: costs.to_dict() for stage, costs in runner.costs.items()}
        task_memory = runner.task_memory
        files = catalog.file_rows(ledger.producers)
        run_info = dict(mix_settings, phase=phase.to_dict(), recipe=recipe.to_dict(), timings=timings, ran=ran,
                        reused=reused, stages=stage_costs, task_memory=task_memory, dedup=dedup_summary,
                        started=datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
                        seconds=time.time() - started, tokenizer=recipe.tokenizers["gemma2"].path,
                        tokenizer_sha256=gemma.sha256, assets=asset_digests(recipe), versions=package_versions(),
                        git_commit=git_commit())
        measured = shard_digests(layout, phase.id)
        ordered = [shards[k] for k in sorted(shards)]
        # the run history holds this build before the manifest's `run` row and the catalog's `runs` view read it
        runs.record_run(layout, phase.id, run_info, ordered, store_counts(runner, finishing))
        ledger.record(f"{phase.id}-manifest", catalog.write_manifest, layout=layout, phase_id=phase.id, plan=plan,
                      shards=ordered, run_info=run_info, files=files,
                      stats=ledger.stats(["curate", "pool"]) + phase_stats)
    layout.delete_tree(Layout.placed_dir(phase.id))
    written = sorted(shard["sha256"] for shard in shards.values())
    if measured != written and layout.exists(Layout.manifest(phase.id, "mlm_eval")):
        layout.delete(Layout.manifest(phase.id, "mlm_eval"))  # `eval-mlm` measured other shards
    catalog.build_catalog(layout)
    write_dataset_card(layout, phase.id, gemma.decode)
    counts = store_counts(runner, finishing)
    runs.record_run(layout, phase.id, run_info, ordered, counts)  # again, with the whole build's requests
    log.info("store: %s", store.describe(sum(map(Counter, counts.values()), Counter())))
    return run_info


def store_counts(runner: Runner, finishing: Counter[str]) -> dict[str, dict[str, int]]:
    """The build's requests to the store so far: per stage, `driver` (the lock, markers, what the driver read
    before the shards) and `finish` (after them: verify, sweep, manifest, catalog, cards)."""
    counts = runner.store_counts()
    finish = store.COUNTS.snapshot() - finishing
    return counts | {"driver": dict(Counter(counts["driver"]) - finish), "finish": dict(finish)}


def shard_digests(layout: Layout, phase_id: str) -> list[str]:
    """The sha256s the phase's shards manifest lists (none before a first build)."""
    if not layout.exists(name := Layout.manifest(phase_id, "shards")):
        return []
    with layout.open(name) as f:
        return sorted(pq.read_table(f, columns=["sha256"]).column(0).to_pylist())


def asset_digests(recipe: Recipe) -> dict[str, dict]:
    """Every model and tokenizer file the recipe names: its resolved path and sha256."""
    digests = {}
    for role, spec in recipe.assets().items():
        local = spec.local
        digests[role] = {"path": str(local or spec.path), "sha256": file_digest(local) if local else None}
    languages = recipe.quality.languages_file
    digests["languages_file"] = {"path": str(languages), "sha256": file_digest(languages)}
    return digests


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
