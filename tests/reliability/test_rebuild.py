"""A build is a function of its inputs and its config: an existing --out rebuilt after adding or removing an input,
or changing a setting or the seed, holds the same shards (sha256) as a fresh build of the same inputs and config;
damaged intermediates and shards are caught by their checksums and rebuilt."""

import gzip
import logging
import random
import shutil

import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.build import build
from pipeline.cli import main
from pipeline.markers import recorded
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import GERMAN, copies_of_german, edit_keeping_size_and_mtime, settings_for, shard_hashes

pytestmark = pytest.mark.slow  # builds the samples


@pytest.fixture
def inputs(tmp_path):
    """FineWeb2 (seven languages) and Dolma, copied where the test may change them, with small shards."""
    root = tmp_path / "in"
    for lang in ("deu_Latn", "fra_Latn", "spa_Latn", "pol_Latn", "tur_Latn", "vie_Latn", "xho_Latn"):
        shutil.copytree(SAMPLES / "fineweb2" / "data" / lang, root / "fineweb2" / "data" / lang)
    shutil.copytree(SAMPLES / "dolma", root / "dolma")
    (root / "sources.yaml").write_text(
        "sources:\n  fineweb2: {path: fineweb2}\n"
        "  dolma: {path: dolma, subsets: {cc_en_head: eng_Latn, redpajama-arxiv: eng_Latn}}\nshard_tokens: 8192\n")
    return root


def fresh_equals(tmp_path, out, sources, phase=1, **kwargs):
    fresh = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    build(settings_for(fresh, phase, sources=sources, **kwargs))
    phase_id = f"phase{phase}"
    return shard_hashes(out, phase_id) == shard_hashes(fresh, phase_id), fresh


def test_added_then_removed_input_equals_a_fresh_build(ray_session, tokenizers, tmp_path, inputs):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    added = inputs / GERMAN / "000_00001.parquet"
    copies_of_german(added)
    info = build(settings_for(out, sources=sources))
    assert info["ran"]["curate"] == 1  # only the new file is curated; every dedup pass runs again
    assert info["dedup"]["exact_removed"] >= 9  # its copies are caught, although dedup had run before
    same, fresh = fresh_equals(tmp_path, out, sources)
    assert same
    build(settings_for(out, 2, sources=sources))
    assert fresh_equals(tmp_path, out, sources, phase=2)[0]

    added.unlink()
    build(settings_for(out, sources=sources))
    same, fresh = fresh_equals(tmp_path, out, sources)
    assert same
    for tree in ("curated", "pool", "dedup"):  # the removed input's files are gone with it
        names = sorted(p.relative_to(out) for p in (out / tree).rglob("*.parquet"))
        assert names == sorted(p.relative_to(fresh) for p in (fresh / tree).rglob("*.parquet")), tree


def test_added_source_equals_a_fresh_build(ray_session, tokenizers, tmp_path, inputs):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    shutil.copytree(SAMPLES / "starcoder", inputs / "starcoder")
    sources.write_text(sources.read_text().replace("shard_tokens:", "  starcoder: {path: starcoder}\nshard_tokens:"))
    build(settings_for(out, sources=sources))
    assert fresh_equals(tmp_path, out, sources)[0]


def test_changed_settings_and_seed_equal_a_fresh_build(ray_session, tokenizers, tmp_path, inputs):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    before = shard_hashes(out)
    stricter = ("quality.fixed.min_doc_words=200",)
    info = build(settings_for(out, sources=sources, overrides=stricter))
    assert info["ran"]["curate"] == len(recorded(Layout(out), "curate"))  # quality is part of curation
    assert shard_hashes(out) != before
    assert fresh_equals(tmp_path, out, sources, overrides=stricter)[0]
    build(settings_for(out, sources=sources, overrides=stricter, seed=7))
    assert fresh_equals(tmp_path, out, sources, overrides=stricter, seed=7)[0]


def test_identity_content_recurates_a_same_size_edit_that_keeps_the_mtime(ray_session, tokenizers, tmp_path, inputs):
    """The default identity (size and mtime) does not see such an edit (test_readers.py); `content` does."""
    folder = inputs / "dolma" / "cc_en_head"
    plain = folder / "cc_en_head-0000.jsonl"  # uncompressed, so that a few bytes can change in place
    plain.write_bytes(gzip.decompress((folder / "cc_en_head-0000.json.gz").read_bytes()))
    (folder / "cc_en_head-0000.json.gz").unlink()
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    by_content = ("sources.sources.dolma.identity=content",)
    build(settings_for(out, sources=sources, overrides=by_content))
    before = shard_hashes(out)
    edit_keeping_size_and_mtime(plain, b"inherent dignity", b"INHERENT DIGNITY")
    info = build(settings_for(out, sources=sources, overrides=by_content))
    assert info["ran"]["curate"] == 1
    assert shard_hashes(out) != before
    assert fresh_equals(tmp_path, out, sources, overrides=by_content)[0]


def test_plain_rerun_runs_nothing(ray_session, tokenizers, tmp_path, inputs, caplog):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    info = build(settings_for(out, sources=sources))
    assert info["ran"] == {}


def test_every_single_bit_flip_in_a_pool_file_is_caught(sample_build, tmp_path):
    out, _ = sample_build
    layout = Layout(out)
    files = pq.read_table(out / "phase1" / "manifest" / "files.parquet").to_pylist()
    pool = next(f for f in files if f["path"].startswith("pool/fineweb2/deu_Latn/"))
    data = (out / pool["path"]).read_bytes()
    assert layout.verify(pool["path"], f"{pool['algorithm']}:{pool['checksum']}") is None
    scratch = Layout(tmp_path)
    rng = random.Random(0)
    for _ in range(200):
        position, bit = rng.randrange(len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        scratch.write_bytes("pool.parquet", bytes(flipped))
        assert scratch.verify("pool.parquet", f"{pool['algorithm']}:{pool['checksum']}") is not None


def test_damaged_pool_file_is_rebuilt_before_a_phase_reads_it(ray_session, tokenizers, tmp_path, inputs, caplog):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    pool = sorted((out / "pool" / "fineweb2" / "deu_Latn").glob("*.parquet"))[0]
    data = bytearray(pool.read_bytes())
    data[len(data) // 2] ^= 0x10
    pool.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        info = build(settings_for(out, 2, sources=sources))
    assert info["ran"]["pool"] == 1
    assert any(pool.name in record.getMessage() and "checksum" in record.getMessage() for record in caplog.records)
    assert fresh_equals(tmp_path, out, sources, phase=2)[0]


def test_deleted_and_damaged_shards_are_repaired(ray_session, tokenizers, tmp_path, inputs, capsys):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    reference = shard_hashes(out)
    shards = sorted((out / "phase1" / "shards").glob("*.parquet"))
    assert len(shards) >= 3
    shards[0].unlink()
    shards[1].unlink()
    data = bytearray(shards[2].read_bytes())
    data[100] ^= 1
    shards[2].write_bytes(bytes(data))
    assert main(["export-mds", "--phase", "1", "--out", str(out), str(tmp_path / "mds")]) == 1
    assert "does not check out" in capsys.readouterr().err
    assert not (tmp_path / "mds" / "index.json").exists()  # nothing exported from damaged shards
    info = build(settings_for(out, sources=sources))
    assert info["ran"]["phase1-shard"] == 3
    assert shard_hashes(out) == reference and check(Layout(out), "phase1") == []


def test_a_killed_runs_temporary_files_are_removed(ray_session, tokenizers, tmp_path, inputs):
    out, sources = tmp_path / "out", inputs / "sources.yaml"
    build(settings_for(out, sources=sources))
    leftovers = [out / "pool" / ".x.parquet.tmp-999999", out / "phase1" / "shards" / ".shard-00000.parquet.tmp-1"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    build(settings_for(out, sources=sources))
    assert not any(path.exists() for path in leftovers)
