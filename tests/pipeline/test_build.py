"""End to end on the bundled samples with real Ray, real Parquet and the real DuckDB catalog."""

import logging
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.build import build
from pipeline.cli import main
from pipeline.sections import PHASES
from stages.base import Document
from stages.paths import PROJECT_ROOT as ROOT
from tests.helpers import query, settings_for, shard_hashes

pytestmark = pytest.mark.slow  # builds the samples

SOURCES = {"fineweb2", "dolma", "megawika", "prolong", "starcoder"}


def test_all_five_sources_reach_the_shards(sample_build, capsys):
    out, _ = sample_build
    rows = query(out, "SELECT source, sum(tokens) AS tokens FROM mixture GROUP BY 1", capsys)
    assert {r["source"]: r["tokens"] for r in rows} == {
        "fineweb2": 216_074, "dolma": 123_958, "starcoder": 18_133, "prolong": 1_334, "megawika": 1_077}
    shards = query(out, "SELECT count(*) AS n, sum(tokens) AS tokens FROM shards", capsys)[0]
    assert shards == {"n": 6, "tokens": 360_576}


def test_shard_rows_follow_the_contract(sample_build):
    out, info = sample_build
    phase = PHASES.load().phase(1)
    table = pq.read_table(out / "phase1" / "shards")
    assert table.schema.names == ["input_ids", "doc_id", "chunk", "source", "lang", "epoch"]
    lengths = [len(ids) for ids in table.column("input_ids").to_pylist()]
    assert max(lengths) <= phase.seq_len
    # past a document's first chunk, no chunk's body is shorter than always_skip (shorter tails are dropped)
    chunks = table.column("chunk").to_pylist()
    assert all(n - 2 >= phase.always_skip for n, chunk in zip(lengths, chunks, strict=True) if chunk > 0)
    for ids in table.column("input_ids").to_pylist()[:50]:
        assert ids[0] == 2 and ids[-1] == 1 and 2 not in ids[1:-1]
    assert info["tokenizer_sha256"] == "61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2"
    # shuffled across languages: the first rows of a shard are not one language
    assert (
        len(set(pq.read_table(out / "phase1" / "shards" / "shard-00000.parquet").column("lang").to_pylist()[:40])) > 3
    )


def test_stage_counts_add_up_and_check_passes(sample_build, capsys):
    out, _ = sample_build
    assert check(Layout(out), "phase1") == []
    assert main(["check", "--out", str(out), "--phase", "1"]) == 0
    stages = query(
        out,
        "SELECT stage, source, sum(read) AS r, sum(kept) AS k, sum(rejected) AS x FROM stages GROUP BY 1, 2",
        capsys,
    )
    assert {s["stage"] for s in stages} == {"read", "lid", "quality", "dedup", "tokenize", "mix"}
    assert all(s["r"] == s["k"] + s["x"] for s in stages)
    pool = query(out, "SELECT source, count(*) AS docs FROM pool GROUP BY 1", capsys)
    assert {p["source"] for p in pool} == SOURCES


def test_every_reject_is_recorded_with_a_reason(sample_build, capsys):
    out, _ = sample_build
    reasons = query(out, "SELECT stage, reason, sum(docs) AS docs FROM reject_reasons GROUP BY 1, 2", capsys)
    rejects = query(out, "SELECT stage, trim(regexp_extract(reason, '^[^<>]*')) AS reason, count(*) AS docs "
                         "FROM rejects GROUP BY 1, 2", capsys)
    per_doc = {(r["stage"], r["reason"]): r["docs"] for r in rejects}
    for row in reasons:
        if row["reason"] != "mix:other_language":  # counted per language, not per document
            assert per_doc[(row["stage"], row["reason"])] == row["docs"]
    # the samples hold Dolma's redpajama subsets and MegaWika articles that phase 1 samples only in part
    assert any(r["reason"] == "mix:not_sampled" for r in reasons)
    stages = {r["stage"] for r in query(out, "SELECT stage, reason, count(*) FROM rejects GROUP BY ALL", capsys)}
    assert {"lid", "quality", "mix"} <= stages


def test_language_unknown_to_the_model_is_kept_by_its_upstream_label(sample_build, capsys):
    out, _ = sample_build
    notes = query(out, "SELECT source, lang, note, docs FROM notes", capsys)
    assert {"source": "fineweb2", "lang": "xho_Latn", "note": "lid:unknown_to_model", "docs": 11} in notes
    pool = query(out, "SELECT count(*) AS docs FROM pool WHERE lang = 'xho_Latn'", capsys)
    assert pool[0]["docs"] == 9


def test_lineage_maps_every_shard_document_to_its_file(sample_build, capsys):
    out, _ = sample_build
    rows = query(
        out, "SELECT count(*) AS n, count(DISTINCT doc_id) AS docs, min(origin) AS origin FROM lineage", capsys
    )
    assert rows[0]["n"] == 680 and rows[0]["docs"] == 272  # a row per document and shard it lands in
    shard_docs = query(
        out,
        f"SELECT count(DISTINCT doc_id) AS docs FROM read_parquet('{out.resolve()}/phase1/shards/*.parquet')",
        capsys,
    )
    assert rows[0]["docs"] == shard_docs[0]["docs"]
    crawl = query(out, """SELECT starts_with(doc_id, 'fineweb2/') AS fineweb2, count(*) AS n, count(dump) AS dumps,
                                 count(*) FILTER (WHERE file_path LIKE 's3://commoncrawl/%/warc/%') AS warcs
                          FROM lineage GROUP BY 1 ORDER BY 1""", capsys)
    others, fineweb2 = crawl
    assert fineweb2["n"] == fineweb2["dumps"] == fineweb2["warcs"] == 490  # FineWeb2's crawl and WARC, every row
    assert others["dumps"] == others["warcs"] == 0


def test_named_queries_run(sample_build, capsys):
    out, _ = sample_build
    assert query(out, "tokens_per_language", capsys)
    assert query(out, "epochs_over_cap", capsys) == []
    assert query(out, "share_target_vs_written", capsys)


def test_rerun_skips_every_task_and_keeps_the_shards(sample_build_copy, caplog):
    out, _ = sample_build_copy
    before = shard_hashes(out)
    settings = settings_for(out)
    with caplog.at_level(logging.DEBUG, "pipeline"):  # dedup's steps log at DEBUG, one line a pass at INFO
        build(settings)
    runs = [r.getMessage() for r in caplog.records if r.name == "pipeline.runner" and "to run" in r.getMessage()]
    stages = {m.split(":")[0] for m in runs}
    assert {stage for stage in stages if not stage.startswith("dedup-")} == {
        "curate", "pool", "phase1-threshold", "phase1-mix", "phase1-shard"}
    assert {"dedup-signatures", "dedup-steps"} <= stages  # the samples' few signatures cluster in one task
    assert all(m.endswith(" 0 to run") for m in runs), runs
    assert shard_hashes(out) == before


def test_cli_build_with_one_worker_gives_identical_shards(sample_build, tmp_path):
    """A separate process with its own embedded Ray of 1 CPU: same seed, same bytes."""
    out, _ = sample_build
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "build",
            "--phase",
            "1",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top languages:" in result.stdout
    assert shard_hashes(tmp_path / "o") == shard_hashes(out)


def test_rejected_documents_from_a_corrupt_file_reach_the_manifest(tmp_path, ray_session, tokenizers, capsys):
    fineweb = tmp_path / "fineweb2" / "data" / "deu_Latn" / "train"
    fineweb.mkdir(parents=True)
    (fineweb / "000_00000.parquet").write_bytes(
        (ROOT / "samples/fineweb2/data/deu_Latn/train/000_00000.parquet").read_bytes()
    )
    (fineweb / "000_00001.parquet").write_bytes(b"PAR1 not really")
    config = tmp_path / "sources.yaml"
    config.write_text(f"sources:\n  fineweb2:\n    path: {tmp_path / 'fineweb2'}\nshard_tokens: 4096\n")
    out = tmp_path / "out"
    build(settings_for(out, sources=config))
    assert check(Layout(out), "phase1") == []
    rows = query(out, "SELECT id, reason, detail FROM rejects WHERE stage = 'read'", capsys)
    assert [(r["id"], r["reason"]) for r in rows] == [
        ("fineweb2/data/deu_Latn/train/000_00001.parquet:file", "read:corrupt_file")
    ]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("sources:\n  commoncrawl:\n    path: /tmp\n", "unknown source 'commoncrawl'"),
        ("sources:\n  fineweb2:\n    path: /does/not/exist\n", "does not exist"),
        ("sources: [1, 2]\n", "must map source names"),
    ],
)
def test_bad_sources_config_exits_2_with_one_line(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "sources.yaml"
    config.write_text(yaml_text)
    assert main(["build", "--phase", "1", "--sources", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(config) in err[0]


def test_unknown_phase_exits_2(capsys):
    assert main(["build", "--phase", "9", "--dry-run"]) == 2
    assert "no phase 9" in capsys.readouterr().err


def test_document_is_datatroves():
    from datatrove.data import Document as DatatroveDocument

    assert Document is DatatroveDocument
