"""Phases 2 and 3 mix again from the phase-1 pool; full-scale plans from mmBERT's counts."""

import json

import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout
from pipeline.cli import main
from stages.paths import COUNTS_FILE
from tests.helpers import query

pytestmark = pytest.mark.slow  # builds the samples


def test_later_phases_only_mix_again(later_phases):
    _, runs = later_phases
    for phase_id, messages in runs.items():
        curation = [m for m in messages if m.startswith(("curate:", "pool:", "dedup-"))]
        assert curation and all(m.endswith(" 0 to run") for m in curation), (phase_id, curation)
        assert any(m.startswith(f"{phase_id}-mix:") and not m.endswith(" 0 to run") for m in messages), messages


@pytest.mark.parametrize("phase_id", ["phase2", "phase3", "phase3-eng"])
def test_later_phase_shards_follow_their_recipe(later_phases, phase_id):
    out, _ = later_phases
    assert check(Layout(out), phase_id) == []
    lengths = [len(ids) for ids in pq.read_table(out / phase_id / "shards").column("input_ids").to_pylist()]
    assert lengths and max(lengths) <= 8192


def test_short_documents_are_kept_whole(later_phases, capsys):
    """Phases 2 and 3 cut at 8,192: a document shorter than a piece is one chunk, whole; past a document's first
    chunk none is shorter than always_skip (32) with bos and eos."""
    out, _ = later_phases
    rows = query(out, f"""SELECT count(*) FILTER (WHERE len(input_ids) < 512) AS short,
                                 count(*) FILTER (WHERE chunk > 0 AND len(input_ids) < 34) AS short_later
                          FROM read_parquet('{out}/phase2/shards/*.parquet')""", capsys)
    assert rows[0]["short"] == 339 and rows[0]["short_later"] == 0
    assert query(out, "SELECT count(*) AS n FROM rejects WHERE reason LIKE 'mix:shorter%'", capsys)[0]["n"] == 0


def test_phase2_takes_the_higher_quality_half(later_phases, capsys):
    out, _ = later_phases
    rows = query(
        out,
        "SELECT count(*) AS n FROM rejects WHERE reason LIKE 'mix:below_quality_tier%' "
        "AND id IN (SELECT doc_id FROM read_parquet('" + str(out.resolve()) + "/phase1/shards/*.parquet'))",
        capsys,
    )
    assert rows[0]["n"] == 123


def test_written_tokens_meet_targets(later_phases, capsys):
    """Within half a chunk per (source, lang): on the samples' FineWeb2 languages, a few percent at most."""
    out, _ = later_phases
    rows = query(
        out, "SELECT phase, source, lang, target_tokens, tokens FROM mixture WHERE source = 'fineweb2'", capsys
    )
    assert rows
    for row in rows:
        chunk = 1024 if row["phase"] == "phase1" else 8192
        assert abs(row["tokens"] - row["target_tokens"]) <= chunk / 2, row


@pytest.mark.parametrize(
    "number, variant, languages, budget",
    [
        (1, None, 61, 2.3e12),
        (2, None, 110, 6e11),
        (3, None, 1834, 1e11),
        (3, "cont", 110, 1e11),
        (3, "eng", 110, 1e11),
    ],
)
def test_full_scale_plan_from_mmberts_counts(capsys, number, variant, languages, budget):
    args = ["plan", "--phase", str(number), "--scale", "full", "--counts", str(COUNTS_FILE), "--format", "json"]
    assert main(args + (["--variant", variant] if variant else [])) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == languages  # the languages (ISO 639-3) plus code
    assert sum(r["target"] for r in rows) == pytest.approx(budget, rel=1e-9)
    assert max(r["epochs"] for r in rows) <= 5 + 1e-9
    assert sum(r["p"] for r in rows) == pytest.approx(1.0)


def test_plan_from_the_pool_prints_a_table(sample_build, capsys):
    out, _ = sample_build
    assert main(["plan", "--phase", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fineweb2" in text and "most repeated:" in text
