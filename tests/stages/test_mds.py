"""MDS against mosaicml/streaming's byte layout (docs/architecture.md section 9), with a shard written by hand."""

import json
import struct

import numpy as np
import pytest
import zstandard

from stages.mds import MDSError, ShardInfo, decompress, encode_shard, index_entry, iter_samples, read_index


def hand_written_shard() -> tuple[bytes, dict]:
    """Two samples of columns {id: str, input_ids: ndarray:uint32, len: int}, byte by byte."""
    config = {"column_encodings": ["str", "ndarray:uint32", "int"], "column_names": ["id", "input_ids", "len"],
              "column_sizes": [None, None, 8], "compression": None, "format": "mds", "hashes": [],
              "size_limit": 1 << 26, "version": 2}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    samples = []
    for doc_id, ids in (("a", [2, 4521, 2134, 1]), ("bc", [2, 1])):
        array = struct.pack("<B", (1 << 2) | 0) + struct.pack("<B", len(ids)) + struct.pack(f"<{len(ids)}I", *ids)
        body = doc_id.encode() + array + struct.pack("<q", len(ids))
        samples.append(struct.pack("<II", len(doc_id.encode()), len(array)) + body)
    start = 4 + 4 * 3 + len(config_bytes)
    offsets = [start, start + len(samples[0]), start + len(samples[0]) + len(samples[1])]
    raw = struct.pack("<I", 2) + struct.pack("<3I", *offsets) + config_bytes + b"".join(samples)
    return raw, config


def test_hand_written_shard_decodes():
    raw, config = hand_written_shard()
    info = ShardInfo.from_index_entry(index_entry(raw, config, 2, "shard.00000.mds"))
    rows = list(iter_samples(raw, info))
    assert [r["id"] for r in rows] == ["a", "bc"]
    assert rows[0]["input_ids"].tolist() == [2, 4521, 2134, 1]
    assert rows[0]["input_ids"].dtype == np.uint32
    assert [r["len"] for r in rows] == [4, 2]


def test_writer_produces_the_hand_written_bytes():
    raw, _ = hand_written_shard()
    rows = [{"id": "a", "input_ids": np.array([2, 4521, 2134, 1]), "len": 4},
            {"id": "bc", "input_ids": np.array([2, 1]), "len": 2}]
    encoded, _ = encode_shard(rows, {"id": "str", "input_ids": "ndarray:uint32", "len": "int"})
    assert encoded == raw


def test_round_trip_2d_arrays_large_shapes_and_zstd():
    rows = [{"indices": np.array([[0, 300], [300, 70000]], np.uint32), "input_ids": np.arange(70000, dtype=np.uint32),
             "domain": "book"}]
    raw, config = encode_shard(rows, {"domain": "str", "indices": "ndarray:uint32", "input_ids": "ndarray:uint32"})
    packed = zstandard.ZstdCompressor().compress(raw)
    entry = index_entry(raw, config, 1, "shard.00000.mds", zstd_data=packed)
    (info,) = read_index(json.dumps({"shards": [entry], "version": 2}))
    assert info.basename == "shard.00000.mds.zstd"
    (row,) = iter_samples(decompress(packed, info.compression), info)
    assert row["indices"].shape == (2, 2)
    assert row["input_ids"][-1] == 69999
    assert row["domain"] == "book"


def test_index_and_shard_disagreements_are_errors():
    raw, config = hand_written_shard()
    with pytest.raises(MDSError, match="samples"):
        list(iter_samples(raw, ShardInfo.from_index_entry(index_entry(raw, config, 3, "s.mds"))))
    with pytest.raises(MDSError, match="bytes"):
        list(iter_samples(raw[:-1], ShardInfo.from_index_entry(index_entry(raw, config, 2, "s.mds"))))
    with pytest.raises(MDSError, match="version"):
        read_index(json.dumps({"shards": [], "version": 1}))
