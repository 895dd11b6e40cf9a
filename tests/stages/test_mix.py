"""The mixing math on hand-checkable counts, chunking as mmBERT's chunker, and hash-ordered fractional epochs."""

import duckdb
import numpy as np
import pytest

from stages.mix import (
    FINEWEB2_BANDS,
    ChunkRules,
    FractionThreshold,
    RehydrateBand,
    band_repeats,
    band_repeats_sql,
    check_bands,
    chunk_hashes,
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


PHASE1, PHASE2 = ChunkRules(1024, 512, 128), ChunkRules(8192, 512, 32)  # configs/phases.yaml's shapes
TINY = ChunkRules(seq_len=12, min_chunk=6, always_skip=3)  # pieces of 10


def mmbert_chunks(tokens: np.ndarray, rules: ChunkRules, draw: int) -> tuple[list[list[int]], int]:
    """The chunker rules as mmBERT's data pipeline states them, one document at a time, its random move replaced
    by `draw` (any integer; taken modulo the range the move is uniform in): the chunks with bos 2 / eos 1, and
    the skipped tokens."""
    body = rules.seq_len - 2
    pieces = np.array_split(tokens, np.arange(body, len(tokens), body))
    chunks: list[np.ndarray] = []
    skipped = 0
    for i, piece in enumerate(pieces):
        if len(piece) < rules.always_skip and i != 0:
            skipped += len(piece)
            continue
        if len(piece) < rules.min_chunk and chunks:
            moved = draw % (body - len(piece))
            if moved:
                piece = np.concatenate([chunks[-1][-moved:], piece])
                chunks[-1] = chunks[-1][:-moved]
        chunks.append(piece)
    return [[2, *chunk.tolist(), 1] for chunk in chunks], skipped


def cut(lengths: list[int], rules: ChunkRules, seed: int = 7) -> tuple[list[list[list[int]]], np.ndarray, np.ndarray]:
    """Each document's chunks as the mixing cuts them (document d holds tokens 1000 + its positions), with the
    skipped and moved tokens per document."""
    ids = [f"doc{d}" for d in range(len(lengths))]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = (1000 + np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)).astype(np.uint32)
    chunks, skipped, moved = chunk_table(np.array(lengths), ids, rules, seed)
    tokens = chunk_tokens(values, offsets, chunks, bos=2, eos=1).to_pylist()
    per_doc: list[list[list[int]]] = [[] for _ in lengths]
    for doc, chunk in zip(chunks.doc.tolist(), tokens, strict=True):
        per_doc[doc].append(chunk)
    return per_doc, skipped, moved


@pytest.mark.parametrize("rules", [PHASE1, PHASE2], ids=["1024-512-128", "8192-512-32"])
def test_chunks_are_cut_as_mmberts_chunker_cuts_them(rules):
    """Listed lengths and 2,000 random ones (half of them a few tokens past a multiple of a piece): the same
    boundaries as a direct transcription of the rules, no token written twice, skipped tails counted."""
    body = rules.seq_len - 2
    rng = np.random.default_rng(30)
    lengths = [1, 31, 32, 511, 512, 8190, 8191, 8223, 16381, 50_000]
    lengths += rng.integers(1, 3 * body, 1000).tolist()
    lengths += (rng.integers(1, 4, 1000) * body + rng.integers(0, 2 * rules.min_chunk, 1000)).tolist()
    seen = {"skipped": 0, "moved": 0}
    for first in range(0, len(lengths), 250):  # in batches: a batch of 8192-token documents holds ~10M tokens
        batch = lengths[first:first + 250]
        per_doc, skipped, moved = cut(batch, rules)
        for d, n in enumerate(batch):
            draw = unit_hash(7, "backfill", f"doc{d}")
            expected, expected_skipped = mmbert_chunks(1000 + np.arange(n), rules, draw)
            assert per_doc[d] == expected, n
            assert skipped[d] == expected_skipped, n
            bodies = [token for chunk in per_doc[d] for token in chunk[1:-1]]
            assert bodies == list(range(1000, 1000 + n - expected_skipped)), n  # each token once, in order
            if moved[d]:
                assert len(per_doc[d][-1]) - 2 == n - (len(per_doc[d]) - 1) * body + moved[d]
            seen["skipped"] += int(skipped[d] > 0)
            seen["moved"] += int(moved[d] > 0)
    assert seen["skipped"] > 20 and seen["moved"] > 100


@pytest.mark.parametrize(
    "n, lengths, skipped",
    [
        (1, [3], 0),  # a one-token document: kept whole
        (2, [4], 0),  # the first piece is kept however short
        (20, [12, 12], 0),  # an exact multiple of the piece: no tail
        (22, [12, 12], 2),  # a 2-token tail is under always_skip: dropped
        (24, None, 0),  # a 4-token tail takes tokens moved from the chunk before
        (27, [12, 12, 9], 0),  # a tail long enough stays as it is
    ],
)
def test_chunk_edge_cases(n, lengths, skipped):
    (chunks,), dropped, moved = cut([n], TINY)
    if lengths is None:
        move = unit_hash(7, "backfill", "doc0") % (10 - 4)
        lengths = [12, 12 - move, 6 + move]
        assert moved[0] == move
    assert [len(c) for c in chunks] == lengths
    assert dropped[0] == skipped
    assert all(c[0] == 2 and c[-1] == 1 for c in chunks)


def test_a_document_is_cut_the_same_in_every_batch():
    """The move comes from (seed, document id), never from the batch or its position in it."""
    alone, _, _ = cut([24], TINY)
    ids = ["other", "doc0"]
    chunks, _, moved = chunk_table(np.array([24, 24]), ids, TINY, seed=7)
    assert moved[1] == cut([24], TINY)[2][0]
    assert [e - s for s, e in zip(chunks.start[chunks.doc == 1], chunks.end[chunks.doc == 1], strict=True)] == [
        len(c) - 2 for c in alone[0]]


@pytest.mark.parametrize("rules", [PHASE1, PHASE2, TINY], ids=["1024-512-128", "8192-512-32", "12-6-3"])
def test_epoch_tokens_sql_matches_the_chunker(rules):
    body = rules.seq_len - 2
    ns = list(range(0, 3 * rules.seq_len, 7)) + [body, 2 * body, 2 * body + 1, 2 * body + rules.always_skip]
    chunks, _, _ = chunk_table(np.array(ns), [str(n) for n in ns], rules, seed=1)
    expected = np.bincount(chunks.doc, weights=chunks.tokens, minlength=len(ns)).astype(int).tolist()
    sql = epoch_tokens_sql("n", rules)
    got = [row[0] for row in duckdb.sql(f"SELECT {sql} FROM unnest({ns}) t(n)").fetchall()]
    assert got == expected


@pytest.mark.parametrize("rules", [PHASE1, PHASE2], ids=["1024-512-128", "8192-512-32"])
def test_plan_tokens_equal_written_tokens(rules):
    """What the plan counts for a document (epoch_tokens_sql, the fraction thresholds' histogram) is what
    mixing writes for it, token for token; skipped and moved tail tokens land in the notes."""
    import pyarrow as pa

    from stages.mix import SampleChunks, Selection

    rng = np.random.default_rng(5)
    lengths = [1, 31, 511, 8191, 8223, 16381, *rng.integers(1, 3 * rules.seq_len, 200).tolist()]
    ids = [f"d{i}" for i in range(len(lengths))]
    sql = epoch_tokens_sql("n", rules)
    planned = duckdb.sql(f"SELECT sum({sql})::BIGINT FROM unnest({lengths}) t(n)").fetchall()[0][0]
    finder = FractionThreshold(seed=3, epoch=0, rules=rules)
    finder.count([(ids, np.array(lengths))])
    assert int(finder.histogram.sum()) == planned
    batch = pa.record_batch({
        "id": ids, "source": ["s"] * len(ids), "lang": ["deu_Latn"] * len(ids),
        "quality": pa.array([1.0] * len(ids), pa.float32()),
        "input_ids": pa.array([list(range(5, 5 + n)) for n in lengths], pa.list_(pa.uint32()))})
    sampler = SampleChunks({("s", "deu_Latn"): Selection(0.0, {1: (2, None)})}, seed=3, rules=rules, bos=2, eos=1)
    written = pa.concat_tables(sampler.sample(batch))
    assert pa.compute.sum(pa.compute.list_value_length(written.column("input_ids"))).as_py() == 2 * planned
    assert sampler.stats.tokens[("s", "deu_Latn")] == 2 * planned
    _, skipped, moved = chunk_table(np.array(lengths), ids, rules, seed=3)
    notes, tokens = sampler.stats.notes[("s", "deu_Latn")], sampler.stats.note_tokens[("s", "deu_Latn")]
    assert (notes["mix:tail_skipped"], tokens["mix:tail_skipped"]) == (np.count_nonzero(skipped), skipped.sum())
    assert (notes["mix:tail_backfilled"], tokens["mix:tail_backfilled"]) == (np.count_nonzero(moved), moved.sum())
    assert tokens["mix:tail_skipped"] > 0 and tokens["mix:tail_backfilled"] > 0


def test_fraction_threshold_reaches_the_target_within_half_a_chunk():
    docs = [([f"doc{i}" for i in range(3000)], np.array([100 + (i * 37) % 900 for i in range(3000)]))]
    finder = FractionThreshold(seed=3, epoch=1, rules=PHASE1)
    finder.count(docs)
    total = int(finder.histogram.sum())
    for fraction in (0.01, 0.3, 0.77):
        bucket, needed = finder.locate(fraction * total)
        threshold = finder.resolve(docs, bucket, needed)
        hashes, tokens = finder.chunks(*docs[0])
        assert abs(int(tokens[hashes <= threshold].sum()) - fraction * total) <= 1024 / 2
    assert FractionThreshold(3, 1, PHASE1).chunks(*docs[0])[0][0] == unit_hash(3, "doc0", 1, 0)


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
        sampler = SampleChunks(plan, seed=1, rules=PHASE1, bos=2, eos=1)
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
