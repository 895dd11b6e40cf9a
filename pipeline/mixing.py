"""Mix one phase from the pool (the orchestration half; stages/mix.py holds the mixing math): plan the targets,
find each fractional epoch's hash threshold, place chunks, write shards. Only this runs again for another
phase: curation is shared.

Ray stages (fingerprinted and resumable, like curation):
    <phase>-threshold  one task per (source, lang) with a fractional epoch: FractionThreshold's two passes
    <phase>-mix        one task per batch of pool files (MIX_BATCH_BYTES): chunk, select, place each chunk in a
                       shard by hash, written to one file per shard it placed chunks in (or, past SHUFFLE_FANOUT
                       shards, per group of about √shards shards)
    <phase>-split      with groups, one task per group: its chunks divided into one file per shard
    <phase>-shard      one task per shard: its own files only, ordered by hash, written
Every placed byte is read once by the shard stage (twice with groups): the shuffle costs in proportion to the
corpus, not to corpus × shards.
"""

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import Layout, known_sizes
from manifests.schemas import PLACED, POOL
from manifests.writer import (
    PLACED_OPTIONS,
    ArrowSink,
    PartitionedSink,
    open_arrow,
    write_task_records,
)
from pipeline.config import ConfigError
from pipeline.partitions import batches, runs
from pipeline.phases import PhaseConfig
from pipeline.runner import Runner, Task
from stages.languages import base_language
from stages.mix import (
    ChunkRules,
    FractionThreshold,
    MixRow,
    RehydrateBand,
    SampleChunks,
    Selection,
    band_repeats,
    band_repeats_sql,
    chunk_hashes,
    copies_per_weight,
    epoch_tokens_sql,
    plan_mixture,
    source_budgets,
)
from stages.shards import write_shard

SHUFFLE_FANOUT = 64  # the most files one mixing task writes; more shards than this are placed in groups
POOL_PLAN_COLUMNS = ("source", "lang", "quality", "n_tokens", "cluster_size")  # what the plan reads of the pool
MIX_BATCH_BYTES = 32 << 20  # pool bytes one mixing task reads: mixing tasks x groups, the shuffle's files, stay few
MIX_BATCH_ROWS = 512  # pool documents sampled and placed together
# Pool bytes of a (source, lang) up to which its threshold task reads the files once for both passes, keeping
# the eligible documents' ids and token counts (a few percent of the bytes) in between: on an object store the
# second pass would fetch every file again.
THRESHOLD_ONE_READ_BYTES = 256 << 20


@dataclass(frozen=True)
class PoolSummary:
    """What a phase can take from the pool, per (source, lang)."""

    available: dict[tuple[str, str], int]  # tokens one epoch writes (eligible documents, chunked)
    by_weight: dict[tuple[str, str], dict[int, int]]  # the same split by re-hydration weight (all 1 without)
    floors: dict[tuple[str, str], float]  # quality tier: the minimum quality kept
    files: dict[tuple[str, str], list[str]]  # pool files (names in the layout)
    outside: list[dict]  # stats rows for the pool documents outside the phase's languages


def pool_files(layout: Layout) -> list[str]:
    return layout.glob(Layout.POOL_GLOB)


def summarize_pool(layout: Layout, phase: PhaseConfig, files: list[str]) -> PoolSummary:
    if not files:
        return PoolSummary({}, {}, {}, {}, [])
    paths = {layout.path(name): name for name in files}
    with layout.duckdb(threads=2) as con:
        con.register("pool", _pool_rows(layout, files))
        groups = con.execute(
            f"""SELECT source, lang, count(*), quantile_disc(quality, {phase.quality_quantile}),
                       list(DISTINCT filename ORDER BY filename)
                FROM pool GROUP BY 1, 2 ORDER BY 1, 2"""
        ).fetchall()
        inside = [(s, lang) for s, lang, *_ in groups if base_language(lang) in phase.language_codes]
        floors = {(s, lang): float(q) if phase.quality_quantile > 0 else 0.0
                  for s, lang, _, q, _ in groups if (s, lang) in inside}
        con.register("floors", _floors_table(floors))
        con.register("pool", _pool_rows(layout, files))
        epoch = epoch_tokens_sql("p.n_tokens", phase.chunking)
        by_weight: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        for s, lang, weight, n in con.execute(
            f"""SELECT p.source, p.lang, {band_repeats_sql('p.cluster_size', phase.bands)}, sum({epoch})
                FROM pool p
                JOIN floors f ON p.source = f.source AND p.lang = f.lang
                WHERE p.quality >= f.floor GROUP BY 1, 2, 3"""
        ).fetchall():
            if n:
                by_weight[(s, lang)][int(weight)] = int(n)
        available = {key: sum(tokens.values()) for key, tokens in by_weight.items()}
    outside = []
    for source, lang, docs, _, _ in groups:
        if (source, lang) not in inside:
            outside += [dict(stage="mix", source=source, lang=lang, reason=reason, read=read, kept=0, rejected=docs,
                             tokens=0, seconds=0.0, task="plan") for reason, read in ((None, docs),
                                                                                    ("mix:other_language", 0))]
    found = {(s, lang): [paths[path] for path in names] for s, lang, _, _, names in groups if (s, lang) in inside}
    return PoolSummary(available, dict(by_weight), floors, found, outside)


def _pool_rows(layout: Layout, files: list[str]) -> pa.RecordBatchReader:
    """The columns of the pool files the plan reads, and each row's file path (`filename`), in one Arrow scan over
    `layout.fs`: a file is opened once and its column chunks read in ranges (DuckDB reading through fsspec asks for
    a stat per file, and again per query). `Layout.dataset`: on an object store the summary's second scan, and the
    catalog's after the shards, take the objects the first one fetched."""
    scanner = layout.dataset(files, POOL).scanner(columns=list(POOL_PLAN_COLUMNS))
    schema = scanner.projected_schema.append(pa.field("filename", pa.string()))
    batches = (batch.append_column("filename", pa.repeat(pa.scalar(tagged.fragment.path), batch.num_rows))
               for tagged in scanner.scan_batches() for batch in [tagged.record_batch])
    return pa.RecordBatchReader.from_batches(schema, batches)


def _floors_table(floors: dict[tuple[str, str], float]) -> pa.Table:
    keys = sorted(floors)
    return pa.table({"source": [s for s, _ in keys], "lang": [lang for _, lang in keys],
                     "floor": [floors[k] for k in keys]})


def plan_phase(phase: PhaseConfig, available: dict[tuple[str, str], int], budget: float) -> list[MixRow]:
    budgets = source_budgets({s for s, _ in available}, budget, phase.fineweb2_share, phase.other_sources)
    return plan_mixture(available, budgets, phase.temperature, phase.max_epochs, phase.fixed_shares)


def _eligible_docs(layout: Layout, files: list[str], floor: float, bands: tuple[RehydrateBand, ...] | None,
                   weight: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (ids, token counts) of the documents at or above the quality floor whose re-hydration weight
    is `weight`."""
    columns = ["id", "n_tokens", "quality", "cluster_size"] if bands else ["id", "n_tokens", "quality"]
    for name in files:
        with layout.open(name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=columns):
                chosen = batch.column("quality").to_numpy(zero_copy_only=False) >= floor
                if bands:
                    chosen &= np.array([band_repeats(size, bands) == weight
                                        for size in batch.column("cluster_size").to_pylist()], bool)
                elif weight != 1:
                    continue
                ids = batch.column("id").to_pylist()
                yield ([doc_id for doc_id, keep in zip(ids, chosen.tolist(), strict=True) if keep],
                       batch.column("n_tokens").to_numpy(zero_copy_only=False)[chosen])


def fraction_threshold(layout: Layout, files: list[str], floor: float, target: float, seed: int, epoch: int,
                       rules: ChunkRules, bands: tuple[RehydrateBand, ...] | None = None, weight: int = 1) -> dict:
    def eligible() -> Iterator[tuple[list[str], np.ndarray]]:
        return _eligible_docs(layout, files, floor, bands, weight)

    finder = FractionThreshold(seed, epoch, rules)
    kept = list(eligible()) if sum(map(layout.size, files)) <= THRESHOLD_ONE_READ_BYTES else None
    finder.count(eligible() if kept is None else kept)
    bucket, needed = finder.locate(target)
    return {"threshold": finder.resolve(eligible() if kept is None else kept, bucket, needed)}


def shards_per_group(n_shards: int, fanout: int) -> int:
    """1 (mixing writes per shard) up to `fanout` shards; else groups of about √n_shards shards."""
    return 1 if n_shards <= fanout else math.ceil(n_shards / math.ceil(math.sqrt(n_shards)))


def mix_files(layout: Layout, phase_id: str, pools: list[str], plan: dict[tuple[str, str], Selection], seed: int,
              rules: ChunkRules, n_shards: int, per_group: int, bos: int, eos: int, key: str,
              bands: tuple[RehydrateBand, ...] | None = None) -> dict:
    """Pick the chunks of a batch of pool files and place each in a shard by a hash of (seed, document, epoch,
    chunk), written to the file of its shard (or shard group)."""
    sampler = SampleChunks(plan, seed, rules, bos, eos, bands)
    placed_name = Layout.placed_in_shard if per_group == 1 else Layout.placed_in_group
    sink = PartitionedSink(layout, lambda group: placed_name(phase_id, group, key), PLACED, options=PLACED_OPTIONS,
                           sink=ArrowSink)
    for batch in _pool_batches(layout, pools):
        for chunks in sampler.sample(batch):
            place = chunk_hashes((seed, "place"), chunks.column("doc_id").to_pylist(),
                                 chunks.column("epoch").to_pylist(), chunks.column("chunk").to_pylist())
            shard = (place % np.uint64(n_shards)).astype(np.int64)
            placed = chunks.add_column(0, "place", pa.array(place)).add_column(0, "shard", pa.array(shard))
            groups = shard // per_group  # each shard its own group when per_group is 1
            order = np.argsort(groups, kind="stable")
            placed, groups = placed.take(order), groups[order]
            for start, end in runs(groups):
                sink.write_table(int(groups[start]), placed.slice(start, end - start))
    sink.close()
    write_task_records(layout, "mix", "batch", key, [sampler], phase=phase_id)
    return {"docs": sum(sampler.stats.kept.values()), "tokens": sum(sampler.stats.tokens.values())}


def _pool_batches(layout: Layout, pools: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows of the pool files in turn, in batches of MIX_BATCH_ROWS or more, small files' rows joined into one:
    a batch's sampling and placing cost about a millisecond however few its rows (700 pool files of 8 documents
    mixed in 2.3-2.7 s a batch per file, 1.4-1.5 s joined). Chunks do not depend on the batch a document is in."""
    pending: list[pa.RecordBatch] = []
    for pool in pools:
        with layout.open(pool) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=MIX_BATCH_ROWS):
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= MIX_BATCH_ROWS:
                    yield pa.concat_batches(pending)
                    pending = []
    if pending:
        yield pa.concat_batches(pending)


def split_group(layout: Layout, phase_id: str, group: int, files: list[str]) -> dict:
    """A shard group's placed chunks, from every mixing task, divided into one file per shard (bounded memory: a
    batch at a time)."""
    sink = PartitionedSink(layout, lambda shard: Layout.placed_in_shard(phase_id, shard, Layout.group_folder(group)),
                           PLACED, options=PLACED_OPTIONS, sink=ArrowSink)
    for name in files:
        reader = open_arrow(layout, name)
        for number in range(reader.num_record_batches):
            table = pa.Table.from_batches([reader.get_batch(number)])
            shards = table.column("shard").to_numpy()
            for shard in np.unique(shards):
                sink.write_table(int(shard), table.filter(pa.array(shards == shard)))
    rows = sink.close()
    return {"rows": sum(rows.values()), "shards": len(rows)}


def mix_phase(runner: Runner, layout: Layout, phase: PhaseConfig, seed: int, budget: float | None,
              shard_tokens: int, bos: int, eos: int) -> tuple[list[MixRow], dict[str, dict], dict, list[dict]]:
    """Plan and write one phase's shards; returns the plan, the shard summaries, the run settings and the phase's
    own counters (STATS rows: the mixing tasks', and the pool documents outside its languages)."""
    files = sorted(name for name in runner.ledger.outputs("pool") if Layout.POOL.parse(name))
    runner.ensure(files)  # the summary reads them all: a damaged or deleted one is written again first
    with known_sizes(runner.sizes(files)):
        pool = summarize_pool(layout, phase, files)
    if not pool.available:
        raise RuntimeError(f"no pool tokens in the phase-{phase.number} language set under {layout.url_of('pool')}")
    budget = budget or float(sum(pool.available.values()))
    plan = plan_rows(phase, pool.available, budget)
    n_shards = max(1, math.ceil(sum(row.target_tokens for row in plan) / shard_tokens))
    settings = dict(seed=seed, budget_tokens=budget, n_shards=n_shards, shard_tokens=shard_tokens)
    copies = {(r.source, r.lang): copies_per_weight(pool.by_weight[(r.source, r.lang)], r.epochs, phase.max_epochs)
              for r in plan}
    fractions = {(source, lang, weight): k for (source, lang), by_weight in copies.items()
                 for weight, k in by_weight.items() if k % 1 > 0}
    thresholds = runner.run(f"{phase.id}-threshold", [
        Task(threshold_key(source, lang, weight), fraction_threshold,
             dict(layout=layout, files=pool.files[(source, lang)], floor=pool.floors[(source, lang)],
                  target=(k % 1) * pool.by_weight[(source, lang)][weight], seed=seed, epoch=math.floor(k),
                  rules=phase.chunking, bands=phase.bands, weight=weight),
             inputs=tuple(pool.files[(source, lang)]))
        for (source, lang, weight), k in sorted(fractions.items())
    ])
    selection = {
        key: Selection(pool.floors[key], {
            weight: (math.floor(k), thresholds.get(threshold_key(*key, weight), {}).get("threshold"))
            for weight, k in by_weight.items()})
        for key, by_weight in copies.items()
    }
    by_file = {name: key for key, names in pool.files.items() for name in names}
    sizes = {name: runner.ledger.size(name) for name in by_file}
    per_group = shards_per_group(n_shards, SHUFFLE_FANOUT)
    runner.run(f"{phase.id}-mix", [
        Task(key, mix_files, dict(layout=layout, phase_id=phase.id, pools=names, seed=seed, rules=phase.chunking,
                                  plan={by_file[name]: selection[by_file[name]] for name in names},
                                  n_shards=n_shards, per_group=per_group, bos=bos, eos=eos, key=key,
                                  bands=phase.bands),
             inputs=tuple(names), size=sum(sizes[name] for name in names))
        for number, names in enumerate(batches(sizes, MIX_BATCH_BYTES))
        for key in [f"batch-{number:05d}"]
    ])
    placed = sorted(runner.ledger.outputs(f"{phase.id}-mix"))
    if per_group > 1:
        runner.run(f"{phase.id}-split", [
            Task(f"group-{group:05d}", split_group, dict(layout=layout, phase_id=phase.id, group=group, files=files),
                 inputs=tuple(files))
            for group, files in sorted(Layout.PLACED_IN_GROUP.by(placed, "group", phase=phase.id).items())
        ])
        placed = sorted(runner.ledger.outputs(f"{phase.id}-split"))
    by_shard = Layout.PLACED_IN_SHARD.by(placed, "shard", phase=phase.id)
    shards = runner.run(f"{phase.id}-shard", [
        Task(f"shard-{s:05d}", write_shard, dict(layout=layout, placed=sorted(by_shard.get(s, [])),
                                                 target=Layout.shard(phase.id, s)), inputs=tuple(by_shard.get(s, [])))
        for s in range(n_shards)
    ], final=True)
    return plan, shards, settings, runner.ledger.stats([f"{phase.id}-mix"]) + pool.outside


def threshold_key(source: str, lang: str, weight: int) -> str:
    return f"{source}__{lang}" if weight == 1 else f"{source}__{lang}__x{weight}"


def read_counts(path: Path, phase: PhaseConfig) -> dict[tuple[str, str], int]:
    """Available tokens per (source, lang) from a counts CSV: columns `lang,tokens` (and optionally `source`;
    without it every row counts for the phase as a whole, source `all`), or mmBERT's counts file, where a phase
    reads the column its language set comes from. Rows outside the phase's languages are left out."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise ConfigError(f"--counts {path}: {error.strerror or error}") from None
    if not rows:
        raise ConfigError(f"{path}: no rows")
    if "language" in rows[0]:  # mmBERT's counts: language + one column per phase
        pairs = [("all", row["language"], row[phase.languages.column]) for row in rows]
    elif {"lang", "tokens"} <= set(rows[0]):
        pairs = [(row.get("source") or "all", row["lang"], row["tokens"]) for row in rows]
    else:
        raise ConfigError(f"{path}: expected columns lang,tokens[,source] (got {', '.join(rows[0])})")
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for source, lang, tokens in pairs:
        if base_language(lang) in phase.language_codes and float(tokens or 0) > 0:
            counts[(source, lang)] += int(float(tokens))
    return dict(counts)


def plan_rows(phase: PhaseConfig, available: dict[tuple[str, str], int], budget: float) -> list[MixRow]:
    """The plan: per-source budgets when the counts name sources, else the whole budget over the languages."""
    if {source for source, _ in available} == {"all"}:
        return plan_mixture(available, {"all": budget}, phase.temperature, phase.max_epochs, phase.fixed_shares)
    return plan_phase(phase, available, budget)
