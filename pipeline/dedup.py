"""The dedup passes as Ray tasks (the orchestration half; stages/dedup.py holds the algorithms and their SQL):
signatures per curated file, then partitioned SQL steps (pipeline/partitions.py) whose task count grows with the
corpus and whose tasks each hold one hash partition: keys, buckets, per pass pairs, verification, component
rounds, keepers, and the clusters by curated file.

Outputs under dedup/<config>/: signatures/<source>/<part>.parquet, steps/<step>/<relation>/<task>.parquet (the
relations between steps, a file per task with a row group per hash partition), clusters/<task>.parquet (every
document in a duplicate cluster, with the id of the one kept, by partition of the curated files) and
removed/<source>/<part>.parquet (the rows of one curated file that the clusters remove or rename), which the pool
task of that file reads.

A document is known by (file number, row): file numbers are given when keys are made, from the sorted parts,
so a curated file's signatures do not depend on which other files the build holds.

A small corpus (signatures up to ONE_TASK_BYTES) runs every step in one task, as one partition (`OneTask`): a
Ray stage per step costs more than the step's SQL there (50 stages, a few MB). The same relations (in one
partition, held in memory rather than written), the same clusters and, byte for byte, the same removals; one
marker (stage `dedup-steps`), so a resume redoes the whole clustering.
"""

import itertools
import logging
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import Layout, known_sizes, recording
from manifests.schemas import DEDUP_CLUSTERS, PAIRS, SIGNATURES
from manifests.writer import ParquetSink
from pipeline.partitions import (
    KeptRelations,
    Output,
    Relation,
    Rows,
    Steps,
    batches,
    keeping,
    partition_task,
    partitions_for,
    rows_dataset,
    run_sql,
)
from pipeline.runner import Runner, Task
from stages.dedup import (
    BANDS,
    BEST,
    CLUSTERS,
    DECISIONS,
    EDGES,
    HALF_PAIRS,
    ID_PASS,
    MEMBERS,
    NODES,
    RECORDS,
    SIGNATURE_ROWS,
    ClusterQueries,
    DedupConfig,
    MinhashConfig,
    MinhashSignatures,
    exact_key,
    fold,
    url_key,
)

log = logging.getLogger(__name__)
# Signatures up to this many bytes (and an eighth of a task's memory) cluster in one task: a 64 MB corpus has
# about 25 MB of them; beyond, partitions on several workers pay for their stages.
ONE_TASK_BYTES = 32 << 20
ONE_TASK_STAGE = "dedup-steps"


class OneTask:
    """What `Steps` asks of a runner, for steps run one after another inside one task: each step's tasks are
    called in this process (their files recorded for the enclosing task's marker too), with no markers of
    their own, and the relations between the steps (under `folder`) held in memory, not written (~3x the
    signatures' bytes: 35 MiB for a 64 MB corpus, 33 files that were each a PUT and a GET on an object store)."""

    def __init__(self, layout: Layout, sizes: dict[str, int], folder: str) -> None:
        self.layout = layout
        self.kept = KeptRelations(folder)
        self.sizes = dict(sizes)  # file name -> bytes: the inputs given, then every file a step writes
        self.written: dict[str, set[str]] = defaultdict(set)  # stage -> the files its tasks wrote
        self.ran: dict[str, int] = defaultdict(int)
        self.ledger = self  # Steps reads sizes and outputs from the runner's ledger

    def run(self, stage: str, tasks: list[Task], costs_as: str | None = None, quiet: bool = False
            ) -> dict[str, dict]:
        summaries = {}
        for task in sorted(tasks, key=lambda task: task.key):
            # the files given and those the steps wrote are opened at their sizes, without asking the store
            with known_sizes({self.layout.path(name): size for name, size in self.sizes.items()}), \
                    recording() as written, keeping(self.kept):
                summaries[task.key] = task.fn(**task.kwargs)
            self.written[stage].update(written)
            self.sizes.update(written.sizes)
            self.ran[stage] += 1
        return summaries

    def size(self, name: str) -> int:
        return self.kept.tables[name][0].nbytes if name in self.kept.tables else self.sizes[name]

    def outputs(self, stage: str) -> set[str]:
        return self.written[stage]


def signature_file(layout: Layout, source: str, part: str, config: MinhashConfig) -> dict:
    signatures = MinhashSignatures(config)
    with layout.open(Layout.curated(source, part)) as f, \
            ParquetSink(layout, Layout.signatures(config, source, part), SIGNATURES) as sink:
        row = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=["id", "text", "lang", "quality", "url"]):
            docs = batch.to_pylist()
            folded = [fold(doc["text"]) for doc in docs]
            values = signatures.signatures([signatures.shingles(doc["text"], doc["lang"], text)
                                            for doc, text in zip(docs, folded, strict=True)])
            bands = signatures.bands(values)
            for doc, text, signature, band in zip(docs, folded, values.tolist(), bands.tolist(), strict=True):
                sink.write(dict(source=source, part=part, row=row, id=doc["id"], lang=doc["lang"],
                                quality=doc["quality"], exact=exact_key(text), url=url_key(doc["url"]),
                                signature=signature, bands=band))
                row += 1
    return {"docs": row}


def _files_table(numbers: dict[tuple[str, str], int]) -> pa.Table:
    keys = sorted(numbers)
    return pa.table({"source": [s for s, _ in keys], "part": [p for _, p in keys],
                     "file_no": pa.array([numbers[k] for k in keys], pa.int64())})


def make_keys(steps: Steps, queries: ClusterQueries, signatures: dict[tuple[str, str], str]
              ) -> tuple[Relation, Relation | None, list[Relation]]:
    """Nodes, signature rows (when MinHash pairs are verified) and candidate pairs (a block per pass), from the
    signature files, read in batches of about a partition's bytes."""
    numbers = {curated: number for number, curated in enumerate(sorted(signatures))}
    by_name = {name: curated for curated, name in signatures.items()}
    sizes = {name: steps.runner.ledger.size(name) for name in signatures.values()}
    schemas = {"nodes": NODES, "bands": BANDS, "signatures": SIGNATURE_ROWS}
    outputs = [steps.output("keys", name, schemas[name], sql) for name, sql in queries.keys().items()]
    tasks = []
    for number, names in enumerate(batches(sizes, max(1, sum(sizes.values()) // steps.partitions))):
        key = f"b{number:05d}"
        files = _files_table({by_name[name]: numbers[by_name[name]] for name in names})
        tasks.append(Task(key, run_sql, dict(layout=steps.layout, task=key,
                                             views={"signatures_in": Rows(tuple(names), SIGNATURES)},
                                             outputs=outputs, tables={"files": files}),
                          inputs=tuple(names), size=sum(sizes[name] for name in names)))
    relations, _ = steps.run("keys", tasks, outputs, costs_as="dedup-keys")
    found = dict(zip(queries.keys(), relations, strict=True))
    pairs = steps.output("buckets", "pairs", PAIRS, queries.buckets(), blocks=len(queries.passes))
    [all_pairs], _ = steps.step("buckets", {"bands": found["bands"]}, [pairs], costs_as="dedup-buckets")
    return (found["nodes"], found.get("signatures"),
            [all_pairs.block(number, steps.partitions) for number in range(len(queries.passes))])


def components(steps: Steps, queries: ClusterQueries, kind: str, edges: Relation) -> Relation:
    """The edges at the fixed point of large-star / small-star rounds: every component a star around its
    smallest node. A round that leaves the edges as they were (the same count and hash sum) ends it."""
    previous = None
    large_star, digest = queries.large_star()
    for round_no in itertools.count(1):
        star, totals = steps.single(f"{kind}-large-{round_no:02d}", {"edges": edges}, "edges", PAIRS, large_star,
                                    digest)
        if (totals["edges"], totals["digest"]) == previous:
            log.debug("dedup %s: components after %d rounds", kind, round_no - 1)
            return edges
        previous = (totals["edges"], totals["digest"])
        edges, _ = steps.single(f"{kind}-small-{round_no:02d}", {"edges": star}, "edges", EDGES, queries.small_star())
    raise AssertionError("unreachable")


def cluster_passes(steps: Steps, queries: ClusterQueries, nodes: Relation, signatures: Relation | None,
                   pairs: list[Relation]) -> tuple[list[Relation], Relation, dict[str, int]]:
    """Pass by pass, among the documents no earlier pass removed: the pass's clusters (by node), the nodes after
    every pass (removed flags, new ids), and the counts per pass."""
    lookups = {"signatures": signatures} if signatures else {}
    clusters, summary = [], {}
    for number, kind in enumerate(queries.passes):
        with steps.reported(f"{kind} pass"):  # one line a pass; each step's at DEBUG
            summary |= {f"{kind}_pairs": 0, f"{kind}_verified_pairs": 0}
            if pairs[number].empty:
                continue
            sql, count = queries.pairs()
            half, totals = steps.single(f"{kind}-pairs", {"pairs": pairs[number], "nodes": nodes, **lookups}, "half",
                                        HALF_PAIRS, sql, count, driving="pairs")
            summary[f"{kind}_pairs"] = totals["pairs"]
            sql, count = queries.verify(kind)
            edges, totals = steps.single(f"{kind}-verify", {"half": half, "nodes": nodes, **lookups}, "edges", EDGES,
                                         sql, count, driving="half")
            summary[f"{kind}_verified_pairs"] = totals["verified_pairs"]
            if edges.empty:
                continue
            edges = components(steps, queries, kind, edges)
            members, _ = steps.single(f"{kind}-roots", {"edges": edges, "nodes": nodes}, "members", MEMBERS,
                                      queries.roots("root" if kind == ID_PASS else "node"), driving="edges")
            inputs = {"members": members}
            if kind != ID_PASS:  # the keeper of each component from the partitions' best: no task holds a component
                best, _ = steps.single(f"{kind}-best", inputs, "best", BEST, queries.best())
                inputs["decisions"], _ = steps.single(f"{kind}-decide", {"best": best}, "decisions", DECISIONS,
                                                      queries.decide())
            sql, count = queries.keepers(number + 1, kind)
            found, totals = steps.single(f"{kind}-keepers", inputs, "clusters", CLUSTERS, sql, count,
                                         driving="members")
            changed = f"{ID_PASS}_renamed" if kind == ID_PASS else f"{kind}_removed"
            summary[changed] = totals[changed]
            clusters.append(found)
            if totals[changed]:
                nodes, _ = steps.single(f"{kind}-nodes", {"nodes": nodes, "clusters": found}, "nodes", NODES,
                                        queries.update(kind), driving="nodes")
    return clusters, nodes, summary


def write_removals(layout: Layout, clusters: Rows, config: MinhashConfig) -> dict:
    """Per curated file of one partition of the clusters: its rows removed or renamed (a renamed document is
    kept under its new id, kept_id; a removed one names the kept one)."""
    columns = ", ".join(DEDUP_CLUSTERS.names)
    sink, current, rows = None, None, 0  # one file open at a time: the rows come sorted by file
    with layout.duckdb() as con:
        con.register("clusters", rows_dataset(layout, clusters))
        reader = con.sql(f"""SELECT {columns} FROM clusters WHERE NOT kept OR id <> kept_id
                             ORDER BY source, part, row, pass""").fetch_arrow_reader(8192)
        try:
            for batch in reader:
                for key, table in _runs(pa.Table.from_batches([batch])):
                    if key != current:
                        if sink is not None:
                            sink.close()
                        sink, current = ParquetSink(layout, Layout.removals(config, *key), DEDUP_CLUSTERS), key
                    sink.write_table(table)
                    rows += table.num_rows
        finally:
            if sink is not None:
                sink.close()
    return {"removal_rows": rows}


def _runs(table: pa.Table) -> list[tuple[tuple[str, str], pa.Table]]:
    """A table sorted by (source, part) cut into its runs of one (source, part)."""
    sources, parts = table.column("source").to_pylist(), table.column("part").to_pylist()
    runs, start = [], 0
    for i in range(1, len(sources) + 1):
        if i == len(sources) or (sources[i], parts[i]) != (sources[start], parts[start]):
            runs.append(((sources[start], parts[start]), table.slice(start, i - start)))
            start = i
    return runs


def read_removals(layout: Layout, name: str) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """For one curated file: row -> (kind, kept id) of the documents removed, row -> new id of those renamed."""
    with layout.open(name) as f:
        rows = pq.read_table(f, columns=["row", "kind", "kept", "kept_id"]).to_pylist()
    removed = {row["row"]: (row["kind"], row["kept_id"]) for row in rows if not row["kept"]}
    renamed = {row["row"]: row["kept_id"] for row in rows if row["kept"]}
    return removed, renamed


def run_dedup(runner: Runner, layout: Layout, curated_files: list[tuple[str, str]],
              dedup: DedupConfig) -> tuple[dict, dict[tuple[str, str], str]]:
    """Every pass for the curated files ((source, part), sorted). Returns the passes' counts and, per
    curated file with removals, the name of its removals file."""
    config = dedup.minhash
    runner.run("dedup-signatures", [
        Task(f"{source}__{part}", signature_file, dict(layout=layout, source=source, part=part, config=config),
             inputs=(Layout.curated(source, part),), size=1)
        for source, part in curated_files
    ])
    sizes = {name: runner.ledger.size(name) for name in (Layout.signatures(config, *c) for c in curated_files)}
    total = sum(sizes.values())
    if total <= min(ONE_TASK_BYTES, runner.task_memory // 8):
        task = Task("all", cluster_in_one_task, dict(layout=layout, curated_files=curated_files, sizes=sizes,
                                                     dedup=dedup), inputs=tuple(sorted(sizes)), size=total)
        [summary] = runner.run(ONE_TASK_STAGE, [task], costs_as="dedup-clusters").values()
        written = runner.ledger.outputs(ONE_TASK_STAGE)
    else:
        steps = Steps(runner, Layout.dedup_steps(config), partitions_for(total, runner.task_memory), prefix="dedup",
                      costs_as="dedup-clusters")
        summary = cluster(steps, dedup, curated_files)
        written = runner.ledger.outputs("dedup-removals")
    runner.ledger.drop_stages("dedup-")  # after success only: a failed build keeps every finished step for its resume
    return summary, {curated: Layout.removals(config, *curated) for curated in curated_files
                     if Layout.removals(config, *curated) in written}


def cluster_in_one_task(layout: Layout, curated_files: list[tuple[str, str]], sizes: dict[str, int],
                        dedup: DedupConfig) -> dict:
    """Every step after the signatures, as one partition, in this task (`sizes`: of the signature files)."""
    folder = Layout.dedup_steps(dedup.minhash)
    steps = Steps(OneTask(layout, sizes, folder), folder, 1, prefix="dedup", costs_as="dedup-clusters")
    return cluster(steps, dedup, curated_files)


def cluster(steps: Steps, dedup: DedupConfig, curated_files: list[tuple[str, str]]) -> dict:
    """From the signatures of the curated files to their clusters and removals; returns the passes' counts."""
    config = dedup.minhash
    queries = ClusterQueries(steps.partitions, dedup.passes, config.min_similarity)
    signatures = {curated: Layout.signatures(config, *curated) for curated in curated_files}
    with steps.reported("keys and candidate pairs"):
        nodes, signature_rows, pairs = make_keys(steps, queries, signatures)
    clusters, nodes, summary = cluster_passes(steps, queries, nodes, signature_rows, pairs)
    with steps.reported("clusters and removals"):
        write_clusters(steps, queries, clusters, nodes, config)
    return summary | {"partitions": steps.partitions}


def write_clusters(steps: Steps, queries: ClusterQueries, clusters: list[Relation], nodes: Relation,
                   config: MinhashConfig) -> None:
    """The clusters by curated file, and each file's removals."""
    if not clusters:
        return
    every = clusters[0]
    for more in clusters[1:]:
        every = every.union(more)
    records, _ = steps.single("records", {"clusters": every, "nodes": nodes}, "records", RECORDS, queries.records(),
                              driving="clusters")
    output = Output(Layout.clusters(config), DEDUP_CLUSTERS, queries.clusters(), steps.partitions)
    [clustered], _ = steps.step("clusters", {"records": records, "nodes": nodes}, [output], driving="records")
    tasks = [partition_task(number, write_removals, dict(layout=steps.layout, clusters=rows, config=config), [rows])
             for number in range(steps.partitions) if (rows := clustered.rows(number)).files]
    steps.run("removals", tasks, [])
