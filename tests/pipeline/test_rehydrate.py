"""FineWeb2-style re-hydration: documents repeated by their upstream cluster-size band, the target kept, no
document past the epoch cap; off by default, when nothing changes."""

import shutil
from collections import defaultdict

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.build import build
from pipeline.sections import PHASES
from stages.mix import FINEWEB2_BANDS, band_repeats
from stages.paths import SAMPLES_DIR
from tests.helpers import query, settings_for

pytestmark = pytest.mark.slow  # builds the samples

SIZES = [1, 2, 3, 4, 50, 500, 5000]  # one of each band: weights 1, 2, 3, 4, 5, 8, 1


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, ray_session, tokenizers):
    """The FineWeb2 samples with upstream cluster sizes of every band, and their sources config."""
    root = tmp_path_factory.mktemp("rehydrate")
    shutil.copytree(SAMPLES_DIR / "fineweb2", root / "fineweb2")
    for path in sorted((root / "fineweb2").rglob("*.parquet")):
        table = pq.read_table(path)
        sizes = pa.array([SIZES[row % len(SIZES)] for row in range(table.num_rows)], pa.int64())
        table = table.set_column(table.schema.get_field_index("minhash_cluster_size"), "minhash_cluster_size", sizes)
        pq.write_table(table, path)
    config = root / "sources.yaml"
    config.write_text(f"sources:\n  fineweb2:\n    path: {root / 'fineweb2'}\nshard_tokens: 16384\n")
    return root, config


def copies(out) -> dict[str, tuple[str, int, int]]:
    """doc_id -> (lang, cluster size, times its first chunk was written) for every pool document of the phase."""
    with duckdb.connect() as con:
        return {doc: (lang, size, n) for doc, lang, size, n in con.execute(f"""
            SELECT p.id, p.lang, p.cluster_size, count(s.doc_id) FROM read_parquet('{out}/pool/**/*.parquet') p
            LEFT JOIN (SELECT doc_id FROM read_parquet('{out}/phase1/shards/*.parquet') WHERE chunk = 0) s
            ON s.doc_id = p.id
            WHERE p.lang IN (SELECT DISTINCT lang FROM read_parquet('{out}/phase1/shards/*.parquet'))
            GROUP BY ALL""").fetchall()}


def test_rehydration_repeats_by_band_within_the_cap(clustered, capsys):
    root, config = clustered
    out = root / "out"
    build(settings_for(out, sources=config))
    plain = copies(out)
    build(settings_for(out, sources=config, overrides=("phases.1.rehydrate=true",)))
    assert check(Layout(out), "phase1") == []
    rehydrated = copies(out)
    assert plain.keys() == rehydrated.keys()
    max_epochs = PHASES.load().phase(1).max_epochs
    by_lang_weight: dict[tuple[str, int], list[int]] = defaultdict(list)
    for lang, size, n in rehydrated.values():
        assert n <= max_epochs
        by_lang_weight[(lang, band_repeats(size, FINEWEB2_BANDS))].append(n)
    for (lang, weight), counts in by_lang_weight.items():
        assert max(counts) - min(counts) <= 1, (lang, weight, counts)  # floor or ceil of k_w
        lighter = [c for (other, w), cs in by_lang_weight.items() for c in cs if other == lang and w < weight]
        if lighter:  # heavier bands get at least as many copies
            assert sum(counts) / len(counts) >= sum(lighter) / len(lighter) - 1
    plain_weights = {band_repeats(size, FINEWEB2_BANDS) for _, size, _ in plain.values()}
    assert plain_weights == {1, 2, 3, 4, 5, 8}  # every band present in the data ...
    by_lang_plain: dict[str, set[int]] = defaultdict(set)
    for lang, _, n in plain.values():
        by_lang_plain[lang].add(n)
    assert all(max(ns) - min(ns) <= 1 for ns in by_lang_plain.values())  # ... and ignored when off
    heavy = [n for _, size, n in rehydrated.values() if band_repeats(size, FINEWEB2_BANDS) == 8]
    light = [n for _, size, n in rehydrated.values() if band_repeats(size, FINEWEB2_BANDS) == 1]
    assert sum(heavy) / len(heavy) > 2 * sum(light) / len(light)
    for row in query(out, "SELECT lang, target_tokens, tokens FROM mixture", capsys):
        assert abs(row["tokens"] - row["target_tokens"]) <= 6 * 512, row  # half a chunk per band at most
