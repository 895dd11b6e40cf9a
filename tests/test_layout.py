"""The output tree has one owner: every path is named in manifests/names.py (Layout inherits the names) and parsed
back there, and dependencies run one way (stages -> manifests -> pipeline): no module of stages/ or manifests/
imports pipeline/."""

import ast
import datetime
import fnmatch
import graphlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout, recording
from manifests.names import Names, Template
from manifests.writer import write_parquet
from stages.dedup import MinhashConfig
from stages.paths import PROJECT_ROOT


def imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["stages", "manifests"])
def test_lower_layers_never_import_the_pipeline(package):
    for path in (PROJECT_ROOT / package).rglob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] == "pipeline"}, path


LAYERS = ("manifests", "stages", "reference", "pipeline")  # each folder imports only the folders before it


def test_folders_import_one_way():
    """The folder graph, from every import (those inside functions too), has no loop and follows LAYERS: the
    CLI in pipeline/ is the top, and reference/ takes what it needs of the recipe as arguments."""
    graph = {folder: {module.split(".")[0] for path in (PROJECT_ROOT / folder).rglob("*.py")
                      for module in imports(path) if module.split(".")[0] in LAYERS} - {folder} for folder in LAYERS}
    list(graphlib.TopologicalSorter(graph).static_order())  # a loop raises CycleError, naming it
    upward = sorted((folder, other) for folder, others in graph.items() for other in others
                    if LAYERS.index(other) > LAYERS.index(folder))
    assert upward == [], f"imports against the order {' <- '.join(LAYERS)}: {upward}"


def test_the_layout_is_a_leaf():
    project = {"pipeline", "stages", "manifests", "reference", "bench"}
    assert not {m for m in imports(PROJECT_ROOT / "manifests" / "names.py") if m.split(".")[0] in project}
    assert {m for m in imports(PROJECT_ROOT / "manifests" / "layout.py") if m.split(".")[0] in project} == {
        "manifests.names", "manifests.store"}
    assert not {m for m in imports(PROJECT_ROOT / "manifests" / "store.py") if m.split(".")[0] in project}


CONFIG = MinhashConfig()
DEDUP = f"dedup/{CONFIG}"
RELATION = f"{DEDUP}/steps/keys/nodes"
# Every kind of name: how the code builds it, the name on disk, and its fields. The names on disk are the tree's
# contract (a build's files are where they were): change one here only with the tree.
NAMES = [
    (Layout.curated("fineweb2", "00003"), "curated/fineweb2/00003.parquet", Names.CURATED,
     dict(source="fineweb2", part="00003")),
    (Layout.rejects("curate", "dolma", "a"), "rejects/curate/dolma/a.parquet", Names.REJECTS,
     dict(group="curate", source="dolma", part="a")),
    (Layout.rejects("mix", "dolma", "a", "phase2"), "phase2/rejects/mix/dolma/a.parquet", Names.PHASE_REJECTS,
     dict(phase="phase2", group="mix", source="dolma", part="a")),
    (Names.DEDUP.format(config=CONFIG), DEDUP, Names.DEDUP, dict(config=str(CONFIG))),
    (Layout.signatures(CONFIG, "fineweb2", "00003"), f"{DEDUP}/signatures/fineweb2/00003.parquet", Names.SIGNATURES,
     dict(config=str(CONFIG), source="fineweb2", part="00003")),
    (Layout.dedup_steps(CONFIG), f"{DEDUP}/steps", Names.DEDUP_STEPS, dict(config=str(CONFIG))),
    (Layout.relation(f"{DEDUP}/steps", "keys", "nodes"), RELATION, Names.RELATION,
     dict(folder=f"{DEDUP}/steps", step="keys", relation="nodes")),
    (Layout.partition(7), "p00007", Names.PARTITION, dict(partition=7)),
    (Layout.relation_file(RELATION, "b00002"), f"{RELATION}/b00002.parquet", Names.RELATION_FILE,
     dict(folder=RELATION, task="b00002")),
    (Layout.clusters(CONFIG), f"{DEDUP}/clusters", Names.CLUSTERS, dict(config=str(CONFIG))),
    (Layout.removals(CONFIG, "fineweb2", "00003"), f"{DEDUP}/removed/fineweb2/00003.parquet", Names.REMOVALS,
     dict(config=str(CONFIG), source="fineweb2", part="00003")),
    (Layout.pool("fineweb2", "deu_Latn", "00003"), "pool/fineweb2/deu_Latn/00003.parquet", Names.POOL,
     dict(source="fineweb2", lang="deu_Latn", part="00003")),
    (Layout.placed_dir("phase1"), "phase1/_placed", Names.PLACED_DIR, dict(phase="phase1")),
    (Names.SHARD_FOLDER.format(shard=42), "s00042", Names.SHARD_FOLDER, dict(shard=42)),
    (Layout.group_folder(3), "g00003", Names.GROUP_FOLDER, dict(group=3)),
    (Layout.placed_in_shard("phase1", 42, "batch-00001"), "phase1/_placed/s00042/batch-00001.arrow",
     Names.PLACED_IN_SHARD, dict(phase="phase1", shard=42, task="batch-00001")),
    (Layout.placed_in_group("phase1", 3, "batch-00001"), "phase1/_placed/g00003/batch-00001.arrow",
     Names.PLACED_IN_GROUP, dict(phase="phase1", group=3, task="batch-00001")),
    (Layout.shards_dir("phase1"), "phase1/shards", Names.SHARDS_DIR, dict(phase="phase1")),
    (Layout.shard("phase1", 12), "phase1/shards/shard-00012.parquet", Names.SHARD, dict(phase="phase1", shard=12)),
    (Layout.card("phase1"), "phase1/README.md", Names.CARD, dict(phase="phase1")),
    (Layout.manifest_dir("phase1"), "phase1/manifest", Names.MANIFEST_DIR, dict(phase="phase1")),
    (Layout.manifest("phase1", "shards"), "phase1/manifest/shards.parquet", Names.MANIFEST,
     dict(phase="phase1", table="shards")),
    (Layout.run_record("phase1", datetime.datetime(2026, 12, 3, 7, 40, tzinfo=datetime.UTC)),
     "phase1/manifest/runs/20261203T074000.000000Z.parquet", Names.RUN_RECORD,
     dict(phase="phase1", stamp="20261203T074000.000000Z")),
    (Layout.report("phase1"), "phase1/report", Names.REPORT_DIR, dict(phase="phase1")),
    (Layout.report("phase1", "index.html"), "phase1/report/index.html", Names.REPORT,
     dict(phase="phase1", file="index.html")),
    (Layout.marker_index("dedup-keys"), "_done/dedup-keys/index.json", Names.MARKER_INDEX, dict(stage="dedup-keys")),
    (Layout.marker_batch("dedup-keys", 7), "_done/dedup-keys/batch-000007.json", Names.MARKER_BATCH,
     dict(stage="dedup-keys", batch=7)),
]


@pytest.mark.parametrize(("built", "name", "kind", "fields"), NAMES, ids=[name for _, name, _, _ in NAMES])
def test_every_name_is_built_and_parsed_back(built, name, kind, fields):
    assert built == name == kind.format(**fields)
    assert kind.parse(name) == fields
    assert fnmatch.fnmatchcase(name, kind.glob()) and name.startswith(kind.folder())


def test_every_kind_of_name_is_covered():
    kinds = {value.pattern for value in vars(Names).values() if isinstance(value, Template)}
    assert kinds == {kind.pattern for _, _, kind, _ in NAMES}


def test_a_name_of_another_kind_does_not_parse():
    assert Names.SHARD.parse("phase1/shards/README.md") is None
    assert Names.REJECTS.parse("phase1/rejects/mix/dolma/a.parquet") is None  # a phase's own: PHASE_REJECTS
    assert Names.PLACED_IN_SHARD.parse("phase1/_placed/g00003/batch-00001.arrow") is None
    assert Names.CURATED.parse("curated/fineweb2/sub/00003.parquet") is None  # a field is one segment


def test_names_are_found_by_their_numbers():
    placed = ["p/_placed/s00003/a.arrow", "p/_placed/g00001/a.arrow", "p/_placed/s00003/b.arrow",
              "p/rejects/mix/batch/a.parquet", "q/_placed/s00004/a.arrow"]
    assert Names.PLACED_IN_SHARD.by(placed, "shard", phase="p") == {
        3: ["p/_placed/s00003/a.arrow", "p/_placed/s00003/b.arrow"]}
    assert Names.PLACED_IN_GROUP.by(placed, "group") == {1: ["p/_placed/g00001/a.arrow"]}
    files = [f"{RELATION}/b00000.parquet", f"{RELATION}s/b00000.parquet", f"{RELATION}/b00001.parquet"]
    assert Names.RELATION_FILE.by(files, "task", folder=RELATION) == {"b00000": [files[0]], "b00001": [files[2]]}


def test_globs_and_folders_of_the_tree():
    """What readers of the whole tree (the catalog, the build's sweep and checks) match names against."""
    assert Layout.POOL_GLOB == "pool/*/*/*.parquet"
    assert Layout.rejects_globs() == ["rejects/*/*/*.parquet", "phase*/rejects/*/*/*.parquet"]
    assert Layout.clusters_glob("*") == "dedup/*/clusters/*.parquet"
    assert Layout.shards_glob("phase1") == "phase1/shards/shard-*.parquet"
    assert Layout.manifest_glob("*") == "phase*/manifest/*.parquet"
    assert Layout.built_folders("phase1") == ["curated", "pool", "dedup", "rejects", "phase1/shards", "phase1/rejects",
                                              "stats", "phase1/stats"]
    assert Layout.in_phase("phase1/shards/shard-00000.parquet", "phase1")
    assert not Layout.in_phase("phase10/README.md", "phase1")
    assert Layout.read_after_build(f"{DEDUP}/clusters/p00001.parquet")
    assert not Layout.read_after_build(f"{RELATION}/b00000.parquet")


def numbered_folders(tree: ast.AST) -> list[str]:
    """F-strings that spell a numbered folder of the tree: `p{n:05d}`, `s{n:05d}` or `g{n:05d}`, alone or after
    a `/`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for text, field in zip(node.values, node.values[1:], strict=False):
                if (isinstance(text, ast.Constant) and isinstance(field, ast.FormattedValue) and field.format_spec
                        and text.value.rsplit("/", 1)[-1] in ("p", "s", "g")):
                    found.append(ast.unparse(node))
    return found


def test_no_module_spells_the_output_tree():
    """Folder names of the tree appear in string literals of manifests/names.py only (docstrings and comments
    aside), and no f-string elsewhere numbers a hash partition, a shard's or a shard group's folder."""
    names = ("_placed", "_done/", "_lock.json", "manifest/", "shards/shard-", "/signatures/", "/steps", "/clusters",
             "/removed/", "catalog.duckdb", "curated/", "pool/", "dedup/", "stats/", "rejects/")
    offenders = []
    for package in ("pipeline", "stages", "manifests", "reference", "bench"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if path.name == "names.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    offenders += [f"{path.name}: {node.value!r}" for name in names if name in node.value]
            offenders += [f"{path.name}: {text}" for text in numbered_folders(tree)]
    assert offenders == []


def test_memory_filesystem_writes_whole_files_with_checksums():
    layout = Layout("memory://tree")
    with recording() as written:
        checksum = write_parquet(layout, "a/b.parquet", pa.table({"x": [1, 2]}), pa.schema([("x", pa.int64())]),
                                 algorithm="sha256")
        layout.write_text("c.json", "{}")
    assert written == {"a/b.parquet": checksum, "c.json": layout.checksum("c.json")}
    assert layout.glob("a/*.parquet") == ["a/b.parquet"] and layout.verify("a/b.parquet", checksum) is None
    with layout.open("a/b.parquet") as f:
        assert pq.read_table(f).column("x").to_pylist() == [1, 2]
    layout.write_bytes("a/b.parquet", b"other")
    assert layout.verify("a/b.parquet", checksum).startswith("checksum")
    layout.delete("a/b.parquet")
    assert layout.verify("a/b.parquet", checksum) == "missing"


def test_a_failed_write_leaves_nothing(tmp_path):
    layout = Layout(tmp_path)
    with pytest.raises(RuntimeError), layout.writing("x.parquet") as spool:
        (tmp_path / "partial").write_text("")
        open(spool.local, "wb").write(b"half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]


def test_listed_once_the_tree_answers_globs_as_the_store_does(tmp_path):
    """After `list_once`, globs and folder listings come from one listing, kept current by the Layout's writes
    and deletes, and equal what the store answers."""
    layout = Layout(tmp_path / "out")
    for name in ("pool/a/x/1.parquet", "pool/b/y/2.parquet", "rejects/curate/a/1.parquet", "phase1/manifest/run.parquet",
                 "phase1/shards/shard-00000.parquet"):
        layout.write_text(name, name)
    listed = Layout(tmp_path / "out")
    listed.list_once()
    listed.write_text("phase1/shards/shard-00001.parquet", "new")
    listed.delete("pool/b/y/2.parquet")
    listed.delete_tree("rejects")
    for pattern in ("**/*.parquet", Layout.POOL_GLOB, Layout.manifest_glob("run"), Layout.shards_glob("phase1"),
                    "rejects/*/*/*.parquet"):
        assert listed.glob(pattern) == layout.glob(pattern), pattern
    for folder in ("pool", "phase1", "rejects", "nothing"):
        assert listed.files(folder) == layout.files(folder), folder
    assert listed.glob(Layout.shards_glob("phase1")) == ["phase1/shards/shard-00000.parquet",
                                                          "phase1/shards/shard-00001.parquet"]
