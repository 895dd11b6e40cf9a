"""The sort-based shuffle of dedup's steps (pipeline/partitions.py), without Ray: a task writes one file per output,
a row group (or more) per partition, and a task of another step reads only its partition's row groups."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.layout import Layout
from pipeline.partitions import (
    ROWS_KEY,
    ROWS_SUMMARY,
    Output,
    Relation,
    Rows,
    decode_rows,
    encode_rows,
    rows_dataset,
    run_sql,
)

SCHEMA = pa.schema([("key", pa.int64()), ("value", pa.string())])


def test_a_task_writes_one_file_and_a_partition_is_read_alone(tmp_path):
    layout = Layout(str(tmp_path))
    keys = pa.table({"key": pa.array(range(100_000), pa.int64())})  # past one Arrow batch: partitions span two
    output = Output("steps/s/out", SCHEMA, "SELECT (key % 7 * 2)::INTEGER AS _p, key, key::VARCHAR AS value FROM k",
                    partitions=14)
    summary = run_sql(layout, "b00000", {}, [output], tables={"k": keys})
    name = Layout.relation_file(output.folder, "b00000")
    assert layout.glob("steps/**/*.parquet") == [name]  # one object, whatever the partition count
    assert list(summary[ROWS_SUMMARY]) == [name]
    assert decode_rows(summary[ROWS_SUMMARY][name]) == {p: len(range(p // 2, 100_000, 7)) for p in range(0, 14, 2)}
    assert summary["out_rows"] == 100_000
    metadata = pq.ParquetFile(tmp_path / name).metadata
    ranges = json.loads(metadata.metadata[ROWS_KEY.encode()])
    assert list(ranges) == [str(p) for p in range(0, 14, 2)] and metadata.num_row_groups > len(ranges)
    for partition in range(0, 14, 2):
        table = rows_dataset(layout, Rows((name,), SCHEMA, partition)).to_table()
        assert table.column("key").to_pylist() == list(range(partition // 2, 100_000, 7))


def test_a_block_reads_its_own_partitions_of_the_files():
    files = tuple(((f"f{p}", 10),) for p in range(6))
    block = Relation("r", SCHEMA, files).block(1, 3)
    assert block.rows(0) == Rows(("f3",), SCHEMA, 3, (10,))
    assert [block.rows_in(p) for p in range(3)] == [True, True, True] and block.names == ["f3", "f4", "f5"]


def test_a_files_rows_by_partition_are_a_short_string_dense_or_sparse():
    """The driver keeps, and the markers store, a step's P² (file, partition) counts: at P = 1,500 a dense file's
    are about its counts' digits and a comma each; a gap costs its partition number, an empty partition nothing."""
    dense = {partition: 30_000 + partition for partition in range(1500)}
    assert decode_rows(encode_rows(dense)) == dense
    assert len(encode_rows(dense)) < 6 * len(dense)
    assert encode_rows({0: 5, 1: 7, 2: 2, 9: 4}) == "5,7,2,9:4"
    sparse = {3: 1, 700: 2, 701: 3, 1499: 4}
    assert encode_rows(sparse) == "3:1,700:2,3,1499:4" and decode_rows(encode_rows(sparse)) == sparse
    assert list(decode_rows(encode_rows(dict(reversed(sparse.items()))))) == sorted(sparse)  # in partition order
