"""The output tree has one owner: every path is named in manifests/layout.py, and dependencies run one way
(stages -> manifests -> pipeline): no module of stages/ or manifests/ imports pipeline/."""

import ast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.layout import Layout, recording
from manifests.writer import write_parquet
from pipeline.config import PROJECT_ROOT


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


def test_the_layout_is_a_leaf():
    project = {"pipeline", "stages", "manifests", "reference", "bench"}
    assert not {m for m in imports(PROJECT_ROOT / "manifests" / "layout.py") if m.split(".")[0] in project}


def test_no_module_spells_the_output_tree():
    """Folder names of the tree appear in string literals of the layout only (docstrings and comments aside)."""
    names = ("_placed", "_done/", "manifest/", "shards/shard-", "/signatures/", "catalog.duckdb")
    offenders = []
    for package in ("pipeline", "stages", "manifests", "reference", "bench"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if path.name == "layout.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    offenders += [f"{path.name}: {node.value!r}" for name in names if name in node.value]
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
