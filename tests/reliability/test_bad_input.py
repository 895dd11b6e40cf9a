"""Damaged and hostile inputs: the run finishes, each bad file or record is quarantined with a one-line reason
naming it, counted in the manifest, and nothing else is lost."""

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.build import build
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import query, settings_for, udhr

pytestmark = pytest.mark.slow  # builds the samples

FINEWEB2 = "samples/fineweb2/data/deu_Latn/train/000_00000.parquet"


def fineweb2_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [dict(text=t, id=i, language=lang, language_script=script, language_score=0.99) for i, t, lang, script in rows]
    )
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, ray_session, tokenizers):
    root = tmp_path_factory.mktemp("damaged")
    for source in ("fineweb2", "dolma", "megawika", "prolong", "starcoder"):
        shutil.copytree(SAMPLES / source, root / source)
    good = (SAMPLES / "fineweb2/data/deu_Latn/train/000_00000.parquet").read_bytes()
    deu = root / "fineweb2/data/deu_Latn/train"
    (deu / "000_00001.parquet").write_bytes(good[: len(good) // 2])  # truncated
    (deu / "000_00002.parquet").write_bytes(b"\x89garbage\x00" * 300)  # not Parquet at all
    pq.write_table(pa.table({"id": ["x"], "content": ["no text column"]}), deu / "000_00003.parquet")  # schema
    (deu / "000_00004.parquet").write_bytes(b"")  # empty
    german = udhr("deu_Latn")
    fineweb2_rows(
        root / "fineweb2/data/zzz_Zzzz/train/000_00000.parquet",
        [
            ("unknown-label", german, "zzz", "Zzzz"),  # a label no language set holds
            ("hostile-label", german, "../../../../tmp/evil", "x"),  # must never become a path
            ("empty-text", "", "deu", "Latn"),
            ("enormous", german + " Menschenrechte" * 400_000, "deu", "Latn"),  # 6 MB of text: capped, noted
        ],
    )
    dolma = root / "dolma/cc_en_head"
    whole = (dolma / "cc_en_head-0000.json.gz").read_bytes()
    (dolma / "cc_en_head-0001.json.gz").write_bytes(whole[: len(whole) // 3])  # truncated gzip
    lines = gzip.decompress(whole).splitlines()
    broken = [
        lines[0],
        b'{"id": "cut", "text": "a line cut in the mid',
        b'{"id": "bad", "text": "\xff\xfe"}',
        lines[1],
    ]
    (dolma / "cc_en_head-0002.json.gz").write_bytes(gzip.compress(b"\n".join(broken)))
    packed = zstandard.ZstdCompressor().compress(b"\n".join(lines))
    (dolma / "cc_en_head-0003.json.zst").write_bytes(packed[: len(packed) // 2])  # truncated zstd
    (root / "megawika/xx").mkdir()
    (root / "megawika/xx/xx-00000.jsonl").write_text(json.dumps({"title": "t", "text": german}) + "\n")
    with open(root / "megawika/de/de-00000.jsonl", "a") as f:
        f.write('{"title": "broken", "text": \n')
    index = root / "prolong/textbooks/proc00-64/index.json"
    entry = json.loads(index.read_text())
    entry["shards"][0]["raw_data"]["bytes"] += 4
    index.write_text(json.dumps(entry))
    pq.write_table(
        pa.table({"id": ["1"], "text": ["no content column"]}), root / "starcoder/python/train-00001-of-00002.parquet"
    )
    config = root / "sources.yaml"
    config.write_text(
        "sources:\n"
        + "".join(f"  {s}:\n    path: {root / s}\n" for s in ("fineweb2", "megawika", "prolong", "starcoder"))
        + f"  dolma:\n    path: {root / 'dolma'}\n    subsets: {{cc_en_head: eng_Latn, starcoder: code}}\n"
        + "shard_tokens: 65536\n"
    )
    out = root / "out"
    build(settings_for(out, sources=config))
    return root, out


QUARANTINED_FILES = {
    ("fineweb2", "data/deu_Latn/train/000_00001.parquet"),
    ("fineweb2", "data/deu_Latn/train/000_00002.parquet"),
    ("fineweb2", "data/deu_Latn/train/000_00003.parquet"),
    ("fineweb2", "data/deu_Latn/train/000_00004.parquet"),
    ("dolma", "cc_en_head/cc_en_head-0001.json.gz"),
    ("dolma", "cc_en_head/cc_en_head-0003.json.zst"),
    ("megawika", "xx/xx-00000.jsonl"),
    ("prolong", "textbooks/proc00-64/shard.00000.mds"),
    ("starcoder", "python/train-00001-of-00002.parquet"),
}


def test_every_damaged_file_is_quarantined_with_a_one_line_reason(damaged, capsys):
    _, out = damaged
    rows = query(out, "SELECT source, file, row, reason, detail FROM quarantine", capsys)
    files = {(r["source"], r["file"]) for r in rows if r["row"] == "file"}
    assert files == QUARANTINED_FILES
    assert all(r["detail"] and "\n" not in r["detail"] for r in rows)
    assert {r["reason"] for r in rows if r["row"] == "file"} == {"read:corrupt_file"}


def test_a_truncated_zstd_file_is_quarantined_for_its_truncation(damaged, capsys):
    _, out = damaged
    rows = query(out, "SELECT detail FROM quarantine WHERE file LIKE '%.zst'", capsys)
    assert [r["detail"] for r in rows] == [
        "ZstdError: zstd decompressor error: the input ends inside a frame (truncated)"
    ]


def test_bad_records_are_quarantined_alone(damaged, capsys):
    _, out = damaged
    rows = query(out, "SELECT source, file, row FROM quarantine WHERE row != 'file' ORDER BY 1, 2, 3", capsys)
    assert [(r["source"], r["file"], r["row"]) for r in rows] == [
        ("dolma", "cc_en_head/cc_en_head-0002.json.gz", "1"),
        ("dolma", "cc_en_head/cc_en_head-0002.json.gz", "2"),
        ("megawika", "de/de-00000.jsonl", "8"),
    ]


def test_nothing_else_is_lost(damaged, capsys):
    root, out = damaged
    assert check(Layout(out), "phase1") == []
    ids = {r["id"] for r in query(out, "SELECT id FROM rejects UNION SELECT id FROM pool", capsys)}
    good_ids = pq.read_table(root / FINEWEB2.replace("samples/", ""), columns=["id"]).column("id").to_pylist()
    assert {f"fineweb2/{i}" for i in good_ids} <= ids  # every document of the good file is accounted for
    kept = query(out, "SELECT count(*) AS n FROM pool WHERE id LIKE 'dolma/cc_en_head/%'", capsys)[0]["n"]
    assert kept > 0  # the good records of the damaged Dolma files still arrive


def test_labels_and_texts_that_cannot_be_kept(damaged, capsys):
    _, out = damaged
    rows = query(
        out,
        "SELECT id, reason, detail FROM rejects WHERE id IN ('fineweb2/unknown-label', "
        "'fineweb2/hostile-label', 'fineweb2/empty-text')",
        capsys,
    )
    reasons = {r["id"]: r["reason"] for r in rows}
    assert reasons == {
        "fineweb2/unknown-label": "lid:other_language",
        "fineweb2/hostile-label": "lid:invalid_label",
        "fineweb2/empty-text": "quality:empty_text",
    }
    notes = query(out, "SELECT note, docs FROM notes WHERE note = 'read:text_capped'", capsys)
    assert notes == [{"note": "read:text_capped", "docs": 1}]


def test_outputs_stay_inside_out(damaged):
    root, out = damaged
    assert not any("evil" in str(path) for path in root.rglob("*"))
    pool_dirs = {path.name for path in (out / "pool").glob("*/*")}
    assert all(".." not in name and "/" not in name for name in pool_dirs)
