"""Exact answers to "why was this document dropped": the measured value in each quality reject, the text with
--keep-rejected-text, and `mmcorpus why ID` from where a document was read to the shards it landed in."""

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.build import build
from pipeline.cli import main
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import run_query, settings_for

pytestmark = pytest.mark.slow  # builds the samples


def test_quality_rejects_carry_the_measured_value(sample_build, capsys):
    out, _ = sample_build
    code, text, _ = run_query(out, "SELECT reason, detail FROM rejects WHERE reason LIKE 'quality:%<%' "
                                   "OR reason LIKE 'quality:%>%'", capsys)
    rows = json.loads(text)
    assert code == 0 and rows
    for row in rows:
        rule, limit = re.match(r"quality:\S+ (\w+)[<>]([\d.e+-]+)$", row["reason"]).groups()
        measured = re.fullmatch(rf"{rule}=([\d.e+-]+)([<>]){re.escape(limit)}", row["detail"])
        assert measured, row
        value = float(measured.group(1))
        assert value < float(limit) if measured.group(2) == "<" else value > float(limit)


@pytest.fixture(scope="module")
def kept_text_build(tmp_path_factory, ray_session, tokenizers):
    root = tmp_path_factory.mktemp("kept")
    shutil.copytree(SAMPLES / "dolma" / "cc_en_head", root / "in" / "cc_en_head")
    (root / "sources.yaml").write_text(f"sources:\n  dolma: {{path: {root / 'in'}}}\nshard_tokens: 4096\n")
    out = root / "out"
    build(settings_for(out, sources=root / "sources.yaml", keep_rejected_text=True))
    return out


def test_keep_rejected_text(kept_text_build):
    rejects = pq.read_table(kept_text_build / "rejects").to_pylist()
    quality = [r for r in rejects if r["stage"] == "quality"]
    assert quality and all(r["text"] and len(r["text"]) > 20 for r in quality)


def test_why_follows_a_document_from_read_to_shards(sample_build, capsys):
    out, _ = sample_build
    code, text, _ = run_query(out, "SELECT doc_id FROM lineage WHERE doc_id IN (SELECT kept_id FROM dedup_clusters "
                                   "WHERE kind = 'minhash' AND NOT kept) LIMIT 1", capsys)
    keeper = json.loads(text)[0]["doc_id"]
    capsys.readouterr()
    assert main(["why", "--out", str(out), keeper]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(keeper) and lines[1].split()[0] == "read"
    assert [line.split()[0] for line in lines[1:6]] == ["read", "lid", "quality", "dedup", "tokenize"]
    assert any("minhash: kept from a cluster of" in line for line in lines)
    assert re.search(r"phase1 +\d+ chunk\(s\), [\d,]+ tokens, epochs .* in shard-\d{5}\.parquet", "\n".join(lines))
    code, text, _ = run_query(out, "SELECT id FROM rejects WHERE reason LIKE 'quality:gopher_quality doc_words%' "
                                   "LIMIT 1", capsys)
    rejected = json.loads(text)[0]["id"]
    assert main(["why", "--out", str(out), rejected]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"  quality +rejected: quality:gopher_quality doc_words<50 \(doc_words=\d+<50\)", last)
    assert main(["why", "--out", str(out), "--format", "json", rejected]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [step["step"] for step in steps] == ["read", "lid", "quality"]
    assert steps[-1]["verdict"].startswith("rejected: quality:gopher_quality doc_words<50")
    assert main(["why", "--out", str(out), "no/such/document"]) == 2
    assert capsys.readouterr().err.startswith("mmcorpus: error: no/such/document: no such document")
