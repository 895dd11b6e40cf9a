"""The mixing math on hand-checkable counts, chunking, and hash-ordered fractional epochs."""

import duckdb
import numpy as np
import pytest

from stages.mix import (
    FINEWEB2_BANDS,
    FractionThreshold,
    RehydrateBand,
    band_repeats,
    band_repeats_sql,
    check_bands,
    chunk_hashes,
    chunk_spans,
    chunk_table,
    chunk_tokens,
    copies_per_weight,
    epoch_tokens_sql,
    plan_mixture,
    source_budgets,
    unit_hash,
    water_fill,
)


def test_uncapped_shares_follow_n_to_the_tau():
    available = {"a": 1000, "b": 100, "c": 10}
    plan = water_fill(available, 0.7, budget=1110, max_epochs=5)
    total = sum(n**0.7 for n in available.values())
    for lang, n in available.items():
        assert plan[lang][0] == pytest.approx(n**0.7 / total, abs=1e-9)
        assert not plan[lang][2]
    assert sum(target for _, target, _ in plan.values()) == pytest.approx(1110)


def test_capped_language_stops_at_max_epochs_and_others_absorb_the_rest():
    available = {"big": 10_000, "mid": 1_000, "small": 10}
    budget = 11_010
    plan = water_fill(available, 0.3, budget, max_epochs=5)
    assert plan["small"][1] == pytest.approx(50)  # 10 tokens x 5 epochs
    assert plan["small"][2] and not plan["big"][2]
    rest = budget - 50
    free_p = plan["big"][0] + plan["mid"][0]
    assert plan["big"][1] == pytest.approx(rest * plan["big"][0] / free_p)  # re-spread in proportion to p
    assert sum(target for _, target, _ in plan.values()) == pytest.approx(budget)


def test_fixed_shares_pin_a_language():
    plan = water_fill({"eng": 1000, "deu": 100, "fra": 100}, 0.5, budget=1000, max_epochs=5, fixed_shares={"eng": 0.5})
    assert plan["eng"][0] == 0.5 and plan["eng"][1] == pytest.approx(500)
    assert plan["deu"][1] == pytest.approx(250)


def test_fineweb2_takes_its_share_and_the_others_split_the_rest():
    budgets = source_budgets(["fineweb2", "dolma", "starcoder"], 1000, 0.6, {"dolma": 3, "starcoder": 1, "prolong": 9})
    assert budgets == {"fineweb2": 600, "dolma": 300, "starcoder": 100}


def test_plan_water_fills_within_each_source():
    available = {("fineweb2", "deu_Latn"): 100, ("fineweb2", "fra_Latn"): 100, ("dolma", "eng_Latn"): 100}
    rows = plan_mixture(available, {"fineweb2": 150, "dolma": 50}, temperature=0.5, max_epochs=5)
    targets = {(r.source, r.lang): r.target_tokens for r in rows}
    assert targets == {("dolma", "eng_Latn"): 50, ("fineweb2", "deu_Latn"): 75, ("fineweb2", "fra_Latn"): 75}
    assert {r.epochs for r in rows} == {0.5, 0.75}


@pytest.mark.parametrize(
    "n, lengths",
    [
        (1, [3]),  # a one-token document: kept whole
        (5, [7]),  # shorter than the minimum chunk: kept whole, as one chunk (DESIGN section 3)
        (6, [8]),  # exactly the minimum body
        (20, [12, 12]),  # an exact multiple of the body: no tail
        (25, [12, 12, 8]),  # a 5-token tail grows backwards to the 6-token minimum
        (27, [12, 12, 9]),  # a tail long enough stays as it is
    ],
)
def test_chunk_edge_cases(n, lengths):
    ids = list(range(100, 100 + n))
    values = np.array([7, 7, *ids, 7], np.uint32)  # the document among others' tokens
    chunks = chunk_table(np.array([2, n, 1]), seq_len=12, min_chunk=8).take(np.arange(len(lengths)) + 1)
    chunks = chunk_tokens(values, np.array([0, 2, 2 + n]), chunks, bos=2, eos=1).to_pylist()
    assert [len(c) for c in chunks] == lengths
    assert all(c[0] == 2 and c[-1] == 1 for c in chunks)
    if n == 25:
        assert chunks[-1][1:-1] == ids[-6:]
    if n <= 10:  # one chunk, holding the whole document
        assert chunks == [[2, *ids, 1]]


def test_epoch_tokens_sql_matches_the_chunker():
    for seq_len, min_chunk in ((1024, 64), (8192, 512), (12, 8)):
        ns = list(range(0, 3 * seq_len, 7)) + [seq_len - 2, 2 * (seq_len - 2), 2 * (seq_len - 2) + 1]
        expected = [sum(end - start + 2 for start, end in chunk_spans(n, seq_len, min_chunk)) for n in ns]
        sql = epoch_tokens_sql("n", seq_len, min_chunk)
        got = [row[0] for row in duckdb.sql(f"SELECT {sql} FROM unnest({ns}) t(n)").fetchall()]
        assert got == expected


def test_fraction_threshold_reaches_the_target_within_half_a_chunk():
    docs = [([f"doc{i}" for i in range(3000)], np.array([100 + (i * 37) % 900 for i in range(3000)]))]
    finder = FractionThreshold(seed=3, epoch=1, seq_len=1024, min_chunk=64)
    finder.count(docs)
    total = int(finder.histogram.sum())
    for fraction in (0.01, 0.3, 0.77):
        bucket, needed = finder.locate(fraction * total)
        threshold = finder.resolve(docs, bucket, needed)
        hashes, tokens = finder.chunks(*docs[0])
        assert abs(int(tokens[hashes <= threshold].sum()) - fraction * total) <= 1024 / 2
    assert FractionThreshold(3, 1, 1024, 64).chunks(*docs[0])[0][0] == unit_hash(3, "doc0", 1, 0)


def test_copies_per_weight_keep_the_target_within_the_cap():
    assert copies_per_weight({1: 1000}, 2.5, 5) == {1: 2.5}
    tokens = {1: 1000, 2: 500, 8: 100}
    k = copies_per_weight(tokens, 1.5, 5)
    assert sum(k[w] * t for w, t in tokens.items()) == pytest.approx(1.5 * 1600)
    assert k[2] == pytest.approx(2 * k[1]) and k[8] == 5  # the heaviest reach the cap first
    assert copies_per_weight(tokens, 5, 5) == {1: 5, 2: 5, 8: 5}


@pytest.mark.parametrize("size", [None, 1, 2, 3, 4, 5, 100, 101, 1000, 1001, 10**6])
def test_band_repeats_in_python_and_sql_agree(size):
    with duckdb.connect() as con:
        in_sql = con.execute(f"SELECT {band_repeats_sql('s', FINEWEB2_BANDS)} FROM (SELECT ?::BIGINT AS s)",
                             [size]).fetchone()[0]
    assert in_sql == band_repeats(size, FINEWEB2_BANDS)
    assert band_repeats(size, None) == 1


def test_bands_must_rise_and_end_open():
    with pytest.raises(ValueError, match="open band"):
        check_bands((RehydrateBand(10, 2), RehydrateBand(5, 3), RehydrateBand(None, 1)))
    with pytest.raises(ValueError, match="open band"):
        check_bands((RehydrateBand(10, 2),))


def test_chunk_table_cuts_each_document_as_chunk_spans_does():
    ns = [0, 1, 5, 10, 11, 12, 20, 25, 27, 100, 0, 3]
    chunks = chunk_table(np.array(ns), seq_len=12, min_chunk=8)
    for d, n in enumerate(ns):
        mine = chunks.take(np.flatnonzero(chunks.doc == d))
        spans = [(start, min(start + 10, n)) for start in range(0, n, 10)]
        if len(spans) > 1 and spans[-1][1] - spans[-1][0] < 6:
            spans[-1] = (n - 6, n)
        assert list(zip(mine.start.tolist(), mine.end.tolist(), strict=True)) == spans, n
        assert mine.index.tolist() == list(range(len(spans)))


def test_chunk_hashes_are_unit_hashes():
    hashes = chunk_hashes((3, "place"), ["a", "b/c"], [0, 2], [5, 0])
    assert hashes.tolist() == [unit_hash(3, "place", "a", 0, 5), unit_hash(3, "place", "b/c", 2, 0)]


def test_sampled_chunks_come_in_bounded_slices_with_the_same_rows(monkeypatch):
    """Picked chunks of long documents over several epochs come in tables of about SLICE_TOKENS tokens; cut
    finer, they are the same rows, counters and rejects."""
    import pyarrow as pa

    import stages.mix
    from stages.mix import SampleChunks, Selection

    lengths = [5, 3000, 0, 700, 12000, 40]
    batch = pa.record_batch({
        "id": [f"d{i}" for i in range(len(lengths))], "source": ["s"] * len(lengths),
        "lang": ["deu_Latn", "deu_Latn", "deu_Latn", "fra_Latn", "fra_Latn", "fra_Latn"],
        "quality": pa.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.9], pa.float32()),
        "input_ids": pa.array([list(range(n)) for n in lengths], pa.list_(pa.uint32())), "origin": ["o"] * 6})
    plan = {("s", "deu_Latn"): Selection(0.0, {1: (2, 2**63)}), ("s", "fra_Latn"): Selection(0.5, {1: (0, 2**62)})}

    def sampled(slice_tokens: int) -> tuple[list[pa.Table], SampleChunks]:
        monkeypatch.setattr(stages.mix, "SLICE_TOKENS", slice_tokens)
        sampler = SampleChunks(plan, seed=1, seq_len=1024, min_chunk=64, bos=2, eos=1)
        return list(sampler.sample(batch)), sampler

    whole, one = sampled(1 << 22)
    sliced, many = sampled(2000)
    assert len(whole) == 1 and len(sliced) > 5
    assert all(pa.compute.sum(pa.compute.list_value_length(t.column("input_ids"))).as_py() <= 2000 + 1024
               for t in sliced)  # a slice ends with the chunk that passes the bound
    assert pa.concat_tables(sliced).equals(whole[0])
    assert (one.stats.kept, one.stats.tokens, one.stats.rejected) == (many.stats.kept, many.stats.tokens,
                                                                      many.stats.rejected)
    assert one.rejects == many.rejects
    assert {(r.id, r.reason) for r in one.rejects} >= {("d2", "mix:not_sampled"),
                                                       ("d3", "mix:below_quality_tier quality<0.5000")}
