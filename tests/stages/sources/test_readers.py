"""Each reader on its bundled samples, on damaged files, and through fsspec URLs."""

import gzip
import io
import json
import os
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from stages.paths import SAMPLES_DIR as SAMPLES
from stages.sources import DolmaReader, FineWeb2Reader, MegaWikaReader, ProLongReader, StarCoderReader
from tests.helpers import edit_keeping_size_and_mtime


def read_all(reader):
    docs = list(reader.run(reader.list_files()))
    return docs, reader.rejects


def test_fineweb2_samples_keep_upstream_labels_and_lineage():
    reader = FineWeb2Reader(str(SAMPLES / "fineweb2"))
    files = reader.list_files()
    assert all("_removed" not in f for f in files)
    assert "data/cmn_Hani/train/000_00001.parquet" in files
    docs, rejects = read_all(reader)
    assert not rejects
    langs = {doc.metadata["lang"] for doc in docs}
    assert {"deu_Latn", "rus_Cyrl", "cmn_Hani", "arb_Arab", "hin_Deva", "jpn_Jpan", "tha_Thai"} <= langs
    doc = docs[0]
    assert doc.id.startswith("fineweb2/<urn:uuid:")
    assert doc.metadata["origin"] == f"{files[0]}:0"
    assert 0.9 <= doc.metadata["lang_score"] <= 1.0
    assert doc.metadata["extra"]["top_langs"]  # decoded from its JSON string
    assert sum(reader.stats.read.values()) == len(docs)
    upstream = doc.metadata["upstream"]  # lineage: the crawl, its WARC, the upstream cluster size
    assert upstream["dump"].startswith("CC-MAIN-") and upstream["file_path"].startswith("s3://commoncrawl/")
    assert upstream["cluster_size"] >= 1 and "file_path" not in doc.metadata["extra"]


def test_fineweb2_bad_cluster_size_is_noted_and_ignored(copy_samples):
    root = copy_samples("fineweb2")
    path = root / "data" / "deu_Latn" / "train" / "000_00000.parquet"
    table = pq.read_table(path)
    sizes = pa.array([0] + [3] * (table.num_rows - 1), pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("minhash_cluster_size"), "minhash_cluster_size",
                                    sizes), path)
    reader = FineWeb2Reader(str(root))
    docs = list(reader.run(["data/deu_Latn/train/000_00000.parquet"]))
    assert [d.metadata["upstream"]["cluster_size"] for d in docs[:2]] == [None, 3]
    assert [label for notes in reader.stats.notes.values() for label in notes.elements()] == ["read:bad_cluster_size"]


def test_fineweb2_reads_removed_folders_on_request():
    reader = FineWeb2Reader(str(SAMPLES / "fineweb2"), include_removed=True)
    assert "data/deu_Latn_removed/train/000_00000.parquet" in reader.list_files()


def test_fineweb2_damaged_files_become_file_rejects(copy_samples):
    root = copy_samples("fineweb2")
    good = root / "data" / "deu_Latn" / "train" / "000_00000.parquet"
    data = good.read_bytes()
    (good.parent / "000_00001.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (good.parent / "000_00002.parquet").write_bytes(b"\x00garbage" * 100)
    pq.write_table(pa.table({"id": ["a"], "url": ["u"]}), good.parent / "000_00003.parquet")  # no text column
    reader = FineWeb2Reader(str(root))
    files = [f for f in reader.list_files() if "/deu_Latn/" in f]
    docs, rejects = read_all(reader)
    assert len(files) == 4
    assert len(docs) == pq.read_metadata(good).num_rows + sum(
        pq.read_metadata(root / f).num_rows for f in reader.list_files() if "/deu_Latn/" not in f
    )
    assert sorted(r.id for r in rejects) == [f"fineweb2/{f}:file" for f in files[1:]]
    assert {r.reason for r in rejects} == {"read:corrupt_file"}
    assert "missing column(s) ['text']" in next(r.detail for r in rejects if r.id.endswith("000_00003.parquet:file"))
    assert sum(reader.stats.read.values()) == sum(reader.stats.kept.values()) + len(rejects)


def test_dolma_samples_subsets_and_languages():
    reader = DolmaReader(str(SAMPLES / "dolma"), subsets={"cc_en_head": "eng_Latn", "starcoder": "code"})
    files = reader.list_files()
    assert files == ["cc_en_head/cc_en_head-0000.json.gz", "starcoder/starcoder-0000.json.gz"]
    docs, rejects = read_all(reader)
    assert not rejects
    assert {doc.metadata["lang"] for doc in docs} == {"eng_Latn", "code_unknown"}
    assert all(doc.id.startswith(("dolma/cc_en_head/", "dolma/starcoder/")) for doc in docs)
    assert docs[0].metadata["extra"]["dolma_source"] == "common-crawl"


def test_dolma_metadata_language_is_kept_for_lid(tmp_path):
    folder = tmp_path / "cc_en_head"
    folder.mkdir()
    records = [{"id": "a", "text": "one", "metadata": {"language": "en", "language_score": 0.9}},
               {"id": "b", "text": "two", "metadata": {"language": ["en"]}},  # malformed: ignored, not fatal
               {"id": "c", "text": "three", "metadata": {}}]
    with gzip.open(folder / "cc_en_head-0000.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    docs, rejects = read_all(DolmaReader(str(tmp_path), subsets={"cc_en_head": "eng_Latn"}))
    assert not rejects
    assert [d.metadata["upstream_lang"] for d in docs] == ["en", None, None]


def test_dolma_without_subsets_reads_every_folder():
    reader = DolmaReader(str(SAMPLES / "dolma"))
    assert len(reader.list_files()) == 4


def test_dolma_bad_lines_and_truncated_gzip(copy_samples):
    root = copy_samples("dolma")
    folder = root / "cc_en_head"
    lines = gzip.decompress((folder / "cc_en_head-0000.json.gz").read_bytes()).split(b"\n")[:5]
    broken = (
        lines[:2] + [b'{"id": "x", "text": "unterminated', b'{"id": "y", "text": "\xff\xfe bad utf-8"}'] + lines[2:]
    )
    (folder / "cc_en_head-0001.json.gz").write_bytes(gzip.compress(b"\n".join(broken)))
    whole = (folder / "cc_en_head-0000.json.gz").read_bytes()
    (folder / "cc_en_head-0002.json.gz").write_bytes(whole[: len(whole) // 2])
    reader = DolmaReader(str(root), subsets={"cc_en_head": "eng_Latn"})
    docs, rejects = read_all(reader)
    reasons = sorted((r.id.split("/", 1)[1], r.reason) for r in rejects)
    assert reasons == [
        ("cc_en_head/cc_en_head-0001.json.gz:2", "read:bad_record"),
        ("cc_en_head/cc_en_head-0001.json.gz:3", "read:bad_record"),
        ("cc_en_head/cc_en_head-0002.json.gz:file", "read:corrupt_file"),
    ]
    from_truncated = [d for d in docs if d.metadata["origin"].startswith("cc_en_head/cc_en_head-0002")]
    assert 0 < len(from_truncated) < len(gzip.decompress(whole).splitlines())
    assert sum(1 for d in docs if "-0001" in d.metadata["origin"]) == 5


def zstd_streamed(data: bytes) -> bytes:
    """As the zstd CLI writes a pipe: a frame whose header leaves out the content size."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(data)
    return out.getvalue()


def test_dolma_zstd_files_read_every_document(copy_samples):
    root = copy_samples("dolma")
    folder = root / "cc_en_head"
    data = gzip.decompress((folder / "cc_en_head-0000.json.gz").read_bytes())
    lines = data.splitlines()
    half = len(data) // 2
    compress = zstandard.ZstdCompressor().compress
    (folder / "cc_en_head-0001.json.zst").write_bytes(compress(data))
    (folder / "cc_en_head-0002.json.zst").write_bytes(compress(data[:half]) + compress(data[half:]))  # 2 frames
    (folder / "cc_en_head-0003.jsonl.zst").write_bytes(zstd_streamed(data))
    reader = DolmaReader(str(root), subsets={"cc_en_head": "eng_Latn"})
    docs, rejects = read_all(reader)
    assert not rejects
    by_file = Counter(d.metadata["origin"].rsplit(":", 1)[0] for d in docs)
    assert by_file == {f"cc_en_head/cc_en_head-{name}": len(lines) for name in
                       ("0000.json.gz", "0001.json.zst", "0002.json.zst", "0003.jsonl.zst")}
    texts = [[d.text for d in docs if d.metadata["origin"].startswith(f"cc_en_head/cc_en_head-000{i}")]
             for i in range(4)]
    assert texts[1] == texts[2] == texts[3] == texts[0]


def test_dolma_damaged_zstd_is_quarantined_for_its_damage(copy_samples):
    root = copy_samples("dolma")
    folder = root / "cc_en_head"
    data = gzip.decompress((folder / "cc_en_head-0000.json.gz").read_bytes())
    compress = zstandard.ZstdCompressor().compress
    packed, streamed = compress(data), zstd_streamed(data)
    first = b"".join(data.splitlines(keepends=True)[:10])
    second = compress(data[len(first):])
    (folder / "cc_en_head-0001.json.zst").write_bytes(packed[: len(packed) // 2])
    (folder / "cc_en_head-0002.json.zst").write_bytes(streamed[:-1])  # one byte short of the frame's end
    (folder / "cc_en_head-0003.json.zst").write_bytes(b"\x89garbage\x00" * 300)
    (folder / "cc_en_head-0004.json.zst").write_bytes(compress(first) + second[: len(second) // 2])
    (folder / "cc_en_head-0000.json.gz").unlink()
    docs, rejects = read_all(DolmaReader(str(root), subsets={"cc_en_head": "eng_Latn"}))
    details = {r.id.split("/", 2)[2]: (r.reason, r.detail) for r in rejects}
    truncated = ("read:corrupt_file", "ZstdError: zstd decompressor error: the input ends inside a frame (truncated)")
    assert details == {
        "cc_en_head-0001.json.zst:file": truncated,
        "cc_en_head-0002.json.zst:file": truncated,
        "cc_en_head-0003.json.zst:file": ("read:corrupt_file",
                                          "ZstdError: zstd decompressor error: Unknown frame descriptor"),
        "cc_en_head-0004.json.zst:file": truncated,
    }
    rows = Counter(d.metadata["origin"].rsplit(":", 1)[0].split("-")[-1] for d in docs)
    assert rows["0004.json.zst"] == 10  # the whole first frame came before the damage, and still arrives
    assert rows["0002.json.zst"] < len(data.splitlines()) and not rows["0001.json.zst"] + rows["0003.json.zst"]


def test_megawika_samples_map_wiki_folders_to_labels():
    docs, rejects = read_all(MegaWikaReader(str(SAMPLES / "megawika")))
    assert not rejects
    assert {doc.metadata["lang"] for doc in docs} == {"deu_Latn", "eng_Latn", "ita_Latn", "por_Latn", "jpn_Jpan"}
    assert all(doc.metadata["url"].startswith("https://") for doc in docs)


def test_megawika_zstd_file_reads_like_its_plain_copy(copy_samples):
    root = copy_samples("megawika")
    plain = root / "de" / "de-00000.jsonl"
    plain.with_suffix(".jsonl.zst").write_bytes(zstd_streamed(plain.read_bytes()))
    docs, rejects = read_all(MegaWikaReader(str(root)))
    assert not rejects
    texts = {name: [d.text for d in docs if d.metadata["origin"].startswith(f"de/{name}:")]
             for name in ("de-00000.jsonl", "de-00000.jsonl.zst")}
    assert texts["de-00000.jsonl.zst"] == texts["de-00000.jsonl"] != []


def test_identity_by_content_sees_a_same_size_edit_that_keeps_the_mtime(copy_samples):
    root = copy_samples("megawika")
    relative = "de/de-00000.jsonl"
    by_mtime, by_content = MegaWikaReader(str(root)), MegaWikaReader(str(root), identity="content")
    before = by_mtime.identity(relative), by_content.identity(relative)
    assert before[1]["version"].startswith("xxh64:")
    edit_keeping_size_and_mtime(root / relative, b"Menschen", b"MENSCHEN")
    assert by_mtime.identity(relative) == before[0]  # documented: make and rsync do not see it either
    edited = by_content.identity(relative)
    assert edited != before[1]
    os.utime(root / relative)  # touched: a new mtime, the same bytes
    assert by_mtime.identity(relative) != before[0] and by_content.identity(relative) == edited


def test_megawika_unknown_wiki_folder_is_a_file_reject(copy_samples):
    root = copy_samples("megawika")
    (root / "zz").mkdir()
    (root / "zz" / "zz-00000.jsonl").write_text(json.dumps({"title": "t", "text": "some text"}) + "\n")
    docs, rejects = read_all(MegaWikaReader(str(root)))
    assert [(r.id, r.reason) for r in rejects] == [("megawika/zz/zz-00000.jsonl:file", "read:corrupt_file")]
    assert "no language code" in rejects[0].detail


def test_starcoder_samples_label_code_by_folder():
    docs, rejects = read_all(StarCoderReader(str(SAMPLES / "starcoder")))
    assert not rejects
    assert {doc.metadata["lang"] for doc in docs} == {"code_c", "code_javascript", "code_python"}
    assert all(doc.metadata["extra"]["max_stars_repo_name"] for doc in docs)


def test_starcoder_missing_content_column(copy_samples):
    root = copy_samples("starcoder")
    pq.write_table(pa.table({"id": ["1"], "text": ["x"]}), root / "python" / "train-00001-of-00002.parquet")
    _, rejects = read_all(StarCoderReader(str(root)))
    assert [r.reason for r in rejects] == ["read:corrupt_file"]
    assert "content" in rejects[0].detail


def test_prolong_splits_packs_by_indices_and_decodes_llama3(tokenizers):
    reader = ProLongReader(str(SAMPLES / "prolong"), llama3=tokenizers["llama3"])
    docs, rejects = read_all(reader)
    assert not rejects
    by_domain = {}
    for doc in docs:
        by_domain.setdefault(doc.metadata["extra"]["domain"], []).append(doc)
    assert set(by_domain) == {"textbooks", "thestackv1_concat_by_repo-65536"}
    assert sum(doc.metadata["extra"]["llama3_tokens"] for doc in by_domain["textbooks"]) == 65536
    assert by_domain["thestackv1_concat_by_repo-65536"][0].text.startswith("# json/__init__.py")
    assert by_domain["thestackv1_concat_by_repo-65536"][0].metadata["lang"] == "code_unknown"
    assert "<|begin_of_text|>" not in docs[0].text


def test_prolong_index_disagreeing_with_shard_is_rejected(copy_samples, tokenizers):
    root = copy_samples("prolong")
    index_path = root / "textbooks" / "proc00-64" / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["samples"] = 2
    index_path.write_text(json.dumps(index))
    docs, rejects = read_all(ProLongReader(str(root), llama3=tokenizers["llama3"]))
    assert [(r.id, r.reason) for r in rejects] == [
        ("prolong/textbooks/proc00-64/shard.00000.mds:file", "read:corrupt_file")
    ]
    assert "index.json says 2" in rejects[0].detail
    assert docs and all(d.metadata["extra"]["domain"] != "textbooks" for d in docs)


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_readers_take_fsspec_urls(protocol):
    if protocol == "file":
        url = f"file://{SAMPLES / 'starcoder'}"
    else:
        memory = fsspec.filesystem("memory")
        for path in (SAMPLES / "starcoder").rglob("*.parquet"):
            memory.pipe(f"/starcoder/{path.relative_to(SAMPLES / 'starcoder')}", path.read_bytes())
        url = "memory://starcoder"
    docs, _ = read_all(StarCoderReader(url))
    local, _ = read_all(StarCoderReader(str(SAMPLES / "starcoder")))
    assert [d.id for d in docs] == [d.id for d in local]


def test_a_path_may_point_at_one_language_or_subset_folder():
    """Real datasets are often fetched one language (or subset) at a time."""
    checks = [
        (FineWeb2Reader(str(SAMPLES / "fineweb2" / "data" / "deu_Latn")), "deu_Latn"),
        (StarCoderReader(str(SAMPLES / "starcoder" / "python")), "code_python"),
        (MegaWikaReader(str(SAMPLES / "megawika" / "de")), "deu_Latn"),
        (DolmaReader(str(SAMPLES / "dolma" / "cc_en_head")), "eng_Latn"),
    ]
    for reader, lang in checks:
        docs, rejects = read_all(reader)
        assert docs and not rejects
        assert {doc.metadata["lang"] for doc in docs} == {lang}
