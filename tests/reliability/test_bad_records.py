"""One bad record costs that record, never its file: wrong-typed or undecodable fields are rejected alone, naming
the field; missing ids, bad URLs, unreadable paths, shared ids and out-of-vocabulary ProLong ids are handled and
counted; the build goes on."""

import gzip
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.build import build
from stages.mds import encode_shard, index_entry
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import query, settings_for, udhr

pytestmark = pytest.mark.slow  # builds the samples

GERMAN = udhr("deu_Latn")


def reverse_words(text: str) -> str:
    """Another text of the same words: no shingle in common with the original."""
    return "\n".join(" ".join(reversed(line.split())) for line in text.split("\n"))


def prolong_shard(folder, samples):
    """An MDS shard of ProLong's columns (no compression) with its index.json."""
    columns = {"domain": "str", "indices": "ndarray:uint32", "input_ids": "ndarray:uint32", "length": "int"}
    columns = {name: encoding for name, encoding in columns.items() if name in samples[0]}
    raw, config = encode_shard(samples, columns)
    folder.mkdir(parents=True)
    (folder / "shard.00000.mds").write_bytes(raw)
    (folder / "index.json").write_text(json.dumps({"shards": [index_entry(raw, config, len(samples),
                                                                          "shard.00000.mds")], "version": 2}))


@pytest.fixture(scope="module")
def bad_records(tmp_path_factory, ray_session, tokenizers):
    root = tmp_path_factory.mktemp("records")
    deu = root / "fineweb2/data/deu_Latn/train"
    deu.mkdir(parents=True)
    good = pq.read_table(SAMPLES / "fineweb2/data/deu_Latn/train/000_00000.parquet")
    pq.write_table(good, deu / "000_00000.parquet")
    reversed_words = [reverse_words(text) for text in good.column("text").to_pylist()[:3]]
    pq.write_table(good.slice(0, 3).set_column(0, "text", pa.array(reversed_words)),
                   deu / "000_00001.parquet")  # the same ids again, in another file, on other texts
    pq.write_table(good.drop_columns(["id"]).slice(3, 2), deu / "000_00002.parquet")  # no id column
    bad_url = good.slice(5, 1).set_column(good.schema.get_field_index("url"), "url", pa.array(["http://[bad2/x"]))
    pq.write_table(bad_url.set_column(good.schema.get_field_index("id"), "id", pa.array(["bad-url"])),
                   deu / "000_00003.parquet")
    os.symlink(root / "nowhere.parquet", deu / "000_00004.parquet")  # dangling
    os.symlink(deu / "000_00005.parquet", deu / "000_00005.parquet")  # a loop

    dolma = root / "dolma/cc_en_head"
    dolma.mkdir(parents=True)
    lines = gzip.decompress((SAMPLES / "dolma/cc_en_head/cc_en_head-0000.json.gz").read_bytes()).splitlines()
    record = json.loads(lines[0])
    bad = [
        json.dumps(record | {"id": "surrogate", "text": record["text"] + " \ud800 end"}),  # escaped lone surrogate
        json.dumps(record | {"id": "meta-text", "metadata": "not a mapping"}),
        json.dumps(record | {"id": "meta-list", "metadata": ["url", "x"]}),
    ]
    (dolma / "cc_en_head-0000.json.gz").write_bytes(gzip.compress(b"\n".join([lines[1], *map(str.encode, bad)])))

    wiki = root / "megawika/de"
    wiki.mkdir(parents=True)
    (wiki / "de-00000.jsonl").write_text("\n".join([
        json.dumps({"title": 1901, "text": GERMAN, "hash": "number-title"}),
        json.dumps({"title": "Menschenrechte", "text": GERMAN, "hash": "good"}),
    ]) + "\n")

    code = root / "starcoder/python"
    code.mkdir(parents=True)
    pq.write_table(pq.read_table(SAMPLES / "starcoder/python/train-00000-of-00001.parquet").drop_columns(["id"])
                   .slice(0, 4), code / "train-00000-of-00001.parquet")

    ids = np.asarray(pq.read_table(SAMPLES / "fineweb2/data/deu_Latn/train/000_00000.parquet").num_rows * [791],
                     np.uint32)  # "the" in Llama 3
    ids = np.concatenate([[128000], np.tile(np.asarray([791, 1917, 374], np.uint32), 30), [200000, 999999]])
    prolong_shard(root / "prolong/textbooks/proc00-64",
                  [{"domain": "textbooks", "indices": np.asarray([[0, len(ids)]], np.uint32),
                    "input_ids": ids.astype(np.uint32), "length": len(ids)}])
    prolong_shard(root / "prolong/textbooks/proc01-64", [{"domain": "textbooks", "length": 3}])  # no input_ids

    config = root / "sources.yaml"
    config.write_text(
        "sources:\n  fineweb2: {path: fineweb2}\n  dolma: {path: dolma, subsets: {cc_en_head: eng_Latn}}\n"
        "  megawika: {path: megawika}\n  starcoder: {path: starcoder}\n"
        "  prolong: {path: prolong, domains: {textbooks: eng_Latn}}\nshard_tokens: 8192\n")
    out = root / "out"
    build(settings_for(out, sources=config))
    return root, out


def rejects(out, capsys, where):
    return query(out, f"SELECT id, source, reason, detail FROM rejects WHERE {where} ORDER BY id", capsys)


def test_wrong_typed_or_undecodable_fields_reject_the_record_alone(bad_records, capsys):
    _, out = bad_records
    rows = rejects(out, capsys, "reason = 'read:bad_record'")
    details = {r["id"].rsplit(":", 1)[1]: r["detail"] for r in rows}
    assert len(rows) == 4
    assert "text is not valid Unicode" in details["1"]  # the Dolma line with a lone surrogate
    assert "metadata is str, not a mapping" in details["2"] and "metadata is list, not a mapping" in details["3"]
    assert "title is int, not text" in details["0"]
    kept = query(out, "SELECT id FROM pool WHERE source IN ('dolma', 'megawika') ORDER BY id", capsys)
    assert [r["id"] for r in kept] == ["dolma/cc_en_head/" + json.loads(
        gzip.decompress((SAMPLES / "dolma/cc_en_head/cc_en_head-0000.json.gz").read_bytes()).splitlines()[1])["id"],
        "megawika/de/good"]


def test_a_missing_id_column_names_documents_by_file_and_row(bad_records, capsys):
    _, out = bad_records
    fineweb2 = query(out, "SELECT id, reason FROM rejects WHERE origin LIKE '%000_00002.parquet:%' ORDER BY id",
                     capsys)
    assert fineweb2 == [{"id": f"fineweb2/data/deu_Latn/train/000_00002.parquet:{row}", "reason": "dedup:exact"}
                        for row in (0, 1)]  # copies of two rows of the first file, found by their text
    ids = [r["id"] for r in query(out, "SELECT id FROM pool WHERE source = 'starcoder' ORDER BY id", capsys)]
    assert ids == [f"starcoder/python/train-00000-of-00001.parquet:{row}" for row in range(4)]


def test_a_bad_url_is_dropped_and_noted(bad_records, capsys):
    _, out = bad_records
    assert query(out, "SELECT docs FROM notes WHERE note = 'read:bad_url'", capsys) == [{"docs": 1}]
    # the document goes on without its URL (a copy of another's text, dedup then removes it)
    assert rejects(out, capsys, "id = 'fineweb2/bad-url'")[0]["reason"] == "dedup:exact"


def test_unreadable_paths_are_quarantined(bad_records, capsys):
    _, out = bad_records
    rows = query(out, "SELECT file, reason FROM quarantine WHERE reason = 'read:unreadable_path' ORDER BY 1", capsys)
    assert [r["file"] for r in rows] == [f"data/deu_Latn/train/000_0000{n}.parquet" for n in (4, 5)]


def test_shared_upstream_ids_become_unique(bad_records, capsys):
    root, out = bad_records
    assert check(Layout(out), "phase1") == []
    renamed = query(out, "SELECT id FROM pool WHERE id LIKE 'fineweb2/%~1' UNION ALL "
                         "SELECT id FROM rejects WHERE id LIKE 'fineweb2/%~1' AND stage != 'mix'", capsys)
    curated = query(out, "SELECT count(*) AS n FROM rejects WHERE origin LIKE '%000_00001.parquet:%' "
                         "AND stage IN ('read', 'lid', 'quality')", capsys)[0]["n"]
    assert len(renamed) == 3 - curated >= 1  # every document of the second file that reached dedup was renamed
    assert query(out, "SELECT docs FROM notes WHERE note = 'dedup:duplicate_id'", capsys) == [{"docs": len(renamed)}]
    assert query(out, "SELECT count(*) AS n FROM pool WHERE id LIKE 'fineweb2/%~1'", capsys)[0]["n"] >= 1
    shard_ids = query(out, f"""SELECT count(*) AS n, count(DISTINCT (doc_id, chunk, epoch)) AS distinct_ids
                               FROM read_parquet('{out}/phase1/shards/*.parquet')""", capsys)[0]
    assert shard_ids["n"] == shard_ids["distinct_ids"]


def test_prolong_ids_outside_llama3_are_noted_and_a_shard_without_input_ids_named(bad_records, capsys):
    _, out = bad_records
    assert query(out, "SELECT docs FROM notes WHERE note = 'read:bad_token_id'", capsys) == [{"docs": 1}]
    [row] = query(out, "SELECT detail FROM quarantine WHERE file LIKE 'textbooks/proc01-64/%'", capsys)
    assert "missing column(s) ['input_ids']" in row["detail"]


def test_outputs_are_complete(bad_records):
    _, out = bad_records
    shutil.rmtree(out / "phase1" / "report", ignore_errors=True)
    assert check(Layout(out), "phase1") == []
