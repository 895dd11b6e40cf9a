"""The mixing math on hand-checkable counts, chunking, and hash-based sampling."""

import pytest

from stages.mix import chunk_document, epochs_for_chunk, plan_mixture, water_fill


def test_uncapped_shares_follow_n_to_the_tau():
    available = {"a": 1000, "b": 100, "c": 10}
    plan = water_fill(available, 0.7, budget=1110, max_epochs=5)
    total = sum(n**0.7 for n in available.values())
    for lang, n in available.items():
        assert plan[lang][0] == pytest.approx(n**0.7 / total, abs=1e-9)
        assert not plan[lang][2]
    assert sum(target for _, target, _ in plan.values()) == pytest.approx(1110)


def test_capped_language_stops_at_max_epochs_and_others_absorb_the_rest():
    available = {"big": 10_000, "small": 10}
    budget = 10_010
    plan = water_fill(available, 0.3, budget, max_epochs=5)
    assert plan["small"][1] == pytest.approx(50)  # 10 tokens x 5 epochs
    assert plan["small"][2]
    assert plan["big"][1] == pytest.approx(budget - 50)
    assert sum(target for _, target, _ in plan.values()) == pytest.approx(budget)


def test_plan_splits_budget_by_source_shares():
    available = {("fineweb2", "deu_Latn"): 100, ("fineweb2", "fra_Latn"): 100, ("dolma", "eng_Latn"): 100}
    rows = plan_mixture(available, {"fineweb2": 3, "dolma": 1}, temperature=0.5, budget=200, max_epochs=5)
    targets = {(r.source, r.lang): r.target_tokens for r in rows}
    assert targets == {("dolma", "eng_Latn"): 50, ("fineweb2", "deu_Latn"): 75, ("fineweb2", "fra_Latn"): 75}
    assert {r.epochs for r in rows} == {0.5, 0.75}


def test_source_without_share_gets_no_target():
    rows = plan_mixture({("prolong", "eng_Latn"): 100, ("dolma", "eng_Latn"): 100}, {"dolma": 1}, 0.7, 100, 5)
    assert {(r.source, r.target_tokens) for r in rows} == {("prolong", 0), ("dolma", 100)}


def test_chunks_have_bos_eos_and_a_backfilled_tail():
    ids = list(range(100, 125))  # 25 tokens
    chunks = chunk_document(ids, seq_len=12, min_chunk=8, bos=2, eos=1)
    assert [len(c) for c in chunks] == [12, 12, 8]  # bodies of 10, 10, then 5 tokens grown to 6
    assert all(c[0] == 2 and c[-1] == 1 for c in chunks)
    assert chunks[-1][1:-1] == ids[-6:]  # the 5-token tail grew backwards to 6
    assert chunk_document(ids[:5], seq_len=12, min_chunk=8, bos=2, eos=1) == []
    assert chunk_document(ids[:6], seq_len=12, min_chunk=8, bos=2, eos=1) == [[2, *ids[:6], 1]]


def test_epochs_whole_and_fractional_by_hash():
    assert list(epochs_for_chunk(0, "doc", 0, 3.0)) == [0, 1, 2]
    picks = [list(epochs_for_chunk(7, f"doc{i}", 0, 1.25)) for i in range(4000)]
    assert all(p[:1] == [0] for p in picks)
    extra = sum(len(p) == 2 for p in picks) / len(picks)
    assert extra == pytest.approx(0.25, abs=0.03)
    assert picks == [list(epochs_for_chunk(7, f"doc{i}", 0, 1.25)) for i in range(4000)]  # deterministic
