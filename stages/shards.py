"""Shards: gather the chunks that mixing placed in one shard, shuffle them by hash, write Parquet (zstd)."""

from pathlib import Path

import duckdb
import pyarrow.compute as pc

from manifests.schemas import SHARD
from manifests.writer import sha256_file, write_parquet


def write_shard(placed_glob: str, shard: int, path: Path) -> dict:
    """Write shard `shard` from the placed chunks; the order is the chunks' placement hash, so it is fixed."""
    with duckdb.connect() as con:
        con.execute("SET threads = 1")
        table = con.sql(
            f"""SELECT {", ".join(SHARD.names)} FROM read_parquet($glob) WHERE shard = $shard
                ORDER BY place, doc_id, epoch, chunk""",
            params={"glob": placed_glob, "shard": shard},
        ).to_arrow_table()
    write_parquet(path, table, SHARD)
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    return dict(path=path.name, rows=table.num_rows, tokens=tokens, bytes=path.stat().st_size,
                sha256=sha256_file(path))
