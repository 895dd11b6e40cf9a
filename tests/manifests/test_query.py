"""`mmcorpus query` reads the output tree and nothing else: no writing, exporting, attaching, installing or
loading, no file outside --out; paths never pasted into SQL; the catalog answers from wherever the output is."""

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.build import build
from pipeline.cli import main
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import run_query, settings_for

pytestmark = pytest.mark.slow  # builds the samples


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1 AS a) TO '{tmp}/x.csv'",
    "COPY (SELECT 1 AS a) TO '{out}/phase1/shards/shard-00000.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{tmp}/exported'",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('{out}/../../../../etc/passwd')",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT 1; COPY (SELECT 1) TO '{tmp}/y.csv'",
    "CREATE TABLE t AS SELECT 1",
])
def test_the_sandbox_refuses(sample_build, tmp_path, capsys, sql):
    out, _ = sample_build
    shard = out / "phase1" / "shards" / "shard-00000.parquet"
    before = shard.read_bytes()
    code, _, err = run_query(out, sql.format(out=out, tmp=tmp_path), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("mmcorpus: error: query"), err
    assert "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == [] and shard.read_bytes() == before


@pytest.mark.parametrize("path", [".tmp/secret.csv", "{cwd}/.tmp/secret.csv"])
def test_the_sandbox_refuses_the_working_directorys_tmp_folder(sample_build, tmp_path, monkeypatch, capsys, path):
    """DuckDB's default temporary folder, `<cwd>/.tmp`, is one it may always read."""
    out, _ = sample_build
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("secret\nhunter2\n")
    code, text, err = run_query(out, f"SELECT * FROM read_csv('{path.format(cwd=tmp_path)}')", capsys)
    assert code == 2 and "hunter2" not in text, text
    assert len(err) == 1 and "Permission Error" in err[0], err


def test_reading_inside_the_output_is_allowed(sample_build, capsys):
    out, _ = sample_build
    code, text, _ = run_query(out, f"SELECT count(*) AS n FROM read_parquet('{out}/phase1/shards/*.parquet')", capsys)
    assert code == 0 and json.loads(text)[0]["n"] == 845
    code, text, _ = run_query(out, "DESCRIBE shards", capsys)
    assert code == 0 and "sha256" in text


@pytest.fixture(scope="module")
def quoted_build(tmp_path_factory, ray_session, tokenizers):
    """An output whose path holds an apostrophe, built from one FineWeb2 language."""
    root = tmp_path_factory.mktemp("quoted")
    shutil.copytree(SAMPLES / "fineweb2" / "data" / "deu_Latn", root / "in" / "data" / "deu_Latn")
    (root / "sources.yaml").write_text(f"sources:\n  fineweb2: {{path: {root / 'in'}}}\nshard_tokens: 4096\n")
    out = root / "o'brien's out"
    build(settings_for(out, sources=root / "sources.yaml"))
    return out


def test_an_output_path_with_an_apostrophe(quoted_build, capsys):
    code, text, _ = run_query(quoted_build, "SELECT count(*) AS n FROM pool", capsys)
    assert code == 0 and json.loads(text)[0]["n"] == 9
    assert main(["check", "--phase", "1", "--out", str(quoted_build)]) == 0


def test_a_copied_output_answers_from_itself(quoted_build, tmp_path, capsys):
    """Copies of copies, so that the shared build keeps its pool: the first copy, having lost its pool, has none
    (it does not read the build it was copied from), and the second copy does not notice."""
    original, copy = tmp_path / quoted_build.name, tmp_path / "copy"
    shutil.copytree(quoted_build, original)
    shutil.copytree(original, copy)
    shutil.rmtree(original / "pool")
    code, _, err = run_query(original, "SELECT count(*) AS n FROM pool", capsys)
    assert code == 2, err
    code, text, _ = run_query(copy, "SELECT count(*) AS n FROM pool", capsys)
    assert code == 0 and json.loads(text)[0]["n"] == 9
    script = "import duckdb; print(duckdb.connect('catalog.duckdb', read_only=True).execute(" \
             "'SELECT count(*) FROM pool').fetchone()[0])"
    result = subprocess.run([sys.executable, "-c", script], cwd=copy, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and int(result.stdout) == 9, result.stderr  # DuckDB run inside the copy


def test_list_describe_and_named_queries(sample_build, capsys):
    out, _ = sample_build
    capsys.readouterr()
    assert main(["query", "--out", str(out), "--list"]) == 0
    listed = capsys.readouterr().out
    for view in ("shards", "mixture", "rejects", "pool", "dedup_clusters", "rejects_by_reason"):
        assert f"\n{view} " in "\n" + listed
    assert "columns: phase, source, lang, available_tokens, p," in listed
    assert main(["query", "--out", str(out), ".tables"]) == 0 and capsys.readouterr().out == listed
    assert main(["query", "--out", str(out), "--describe", "mixture"]) == 0
    assert "target_tokens" in capsys.readouterr().out
    assert main(["query", "--out", str(out), "tokens_per_lang"]) == 2
    assert "named queries: epochs_over_cap, rejects_by_reason" in capsys.readouterr().err


def test_table_floats_are_rounded_and_curation_rejects_counted_once(sample_build, capsys):
    out, _ = sample_build
    capsys.readouterr()
    assert main(["query", "--out", str(out), "SELECT 1.0 / 3 AS third, 2.5 AS half"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["0.3333", "2.5"]
    code, text, _ = run_query(out, "rejects_by_reason", capsys)
    named: dict[tuple[str, str], int] = {}
    for row in json.loads(text):
        named[(row["phase"], row["stage"])] = named.get((row["phase"], row["stage"]), 0) + row["docs"]
    code, text, _ = run_query(out, "SELECT stage, count(*) AS docs FROM rejects WHERE stage <> 'mix' GROUP BY 1",
                              capsys)
    assert {("curation", r["stage"]): r["docs"] for r in json.loads(text)} == {
        key: docs for key, docs in named.items() if key[0] == "curation"}
