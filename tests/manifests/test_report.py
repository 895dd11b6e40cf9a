"""The data card: every section and figure present, its tables equal to the manifest, and a real render."""

import csv
import re
import shutil
from pathlib import Path

import pytest

from manifests.catalog import connect
from manifests.layout import Layout
from manifests.report import build_report
from manifests.screenshot import screenshot
from stages.tokenize import load_gemma2

pytestmark = pytest.mark.slow  # builds the samples, renders in a real browser

SECTIONS = ["recipe", "full-recipe", "languages", "annealing", "sources", "curation", "lengths", "quality", "shards",
            "terms", "examples", "use", "citation"]
FIGURES = ["tokens_per_language", "annealing", "tokens_per_source", "kept_vs_rejected", "reject_reasons", "lengths",
           "quality"]


@pytest.fixture(scope="module")
def report(sample_build, tokenizers, tmp_path_factory):
    """The data card of a copy of the sample build: (out directory, its index.html)."""
    out = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(sample_build[0], out)
    return out, Path(build_report(Layout(out), "phase1", load_gemma2(tokenizers["gemma2"]).decode))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_section_and_figure_is_there(report):
    _, page = report
    text = page.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert text.count('src="data:image/png;base64,') == len(FIGURES)  # inline: the page opens offline
    assert "<script" not in text and "http://" not in text.split("<body>")[1].split("sha256")[0]
    for name in FIGURES:
        assert (page.parent / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_tables_equal_the_manifest(report):
    out, page = report
    with connect(Layout(out)) as con:
        mixture = {
            lang: (int(target), int(written))
            for lang, target, written in con.execute(
                "SELECT lang, sum(target_tokens), sum(tokens) FROM mixture WHERE phase = 'phase1' GROUP BY 1"
            ).fetchall()
        }
        shards = {
            path: (rows, tokens, sha)
            for path, rows, tokens, sha in con.execute(
                "SELECT path, rows, tokens, sha256 FROM shards WHERE phase = 'phase1'"
            ).fetchall()
        }
        rejected = con.execute("SELECT sum(docs) FROM reject_reasons WHERE phase = 'phase1'").fetchone()[0]
    languages = read_csv(page.parent / "languages.csv")
    assert {r["lang"]: (int(r["target"]), int(r["written"])) for r in languages} == mixture
    assert {
        r["path"]: (int(r["rows"]), int(r["tokens"]), r["sha256"]) for r in read_csv(page.parent / "shards.csv")
    } == shards
    assert sum(int(r["documents"]) for r in read_csv(page.parent / "reject_reasons.csv")) == rejected
    for sha in (s for _, _, s in shards.values()):
        assert sha in page.read_text()  # the html table shows the same rows


def test_recipe_names_tokenizer_seed_and_timings(report):
    _, page = report
    recipe = {r["setting"]: r["value"] for r in read_csv(page.parent / "recipe.csv")}
    assert recipe["tokenizer sha256"] == "61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2"
    assert recipe["temperature τ"] == "0.7" and recipe["seed"] == "0"
    assert re.match(r"61 ", recipe["languages"])
    stages = {r["stage"] for r in read_csv(page.parent / "timings.csv")}
    assert {"curate", "dedup", "pool", "mix", "total"} <= stages


def test_renders_in_headless_chromium(report):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Debian's chromium is not installed (make report-check installs it)")
    _, page = report
    image = screenshot(page.parent)
    assert image.read_bytes().startswith(b"\x89PNG") and image.stat().st_size > 50_000


def test_the_page_hides_no_rows_and_names_languages(report):
    _, page = report
    text = page.read_text()
    assert "max-height" not in text and "overflow" not in text  # no scroll boxes: print and screenshots show all
    languages = read_csv(page.parent / "languages.csv")
    assert {r["lang"]: r["name"] for r in languages}["deu_Latn"] == "German (Latn)"
    assert all(0 <= float(r["removed_in_curation"]) < 1 for r in languages if r["removed_in_curation"])
    assert "ODC-By 1.0" in text and "CC BY-SA 4.0" in text and "arXiv:2509.06888" in text
    assert "min_similarity: 0.7" in text and "${MMCORPUS_CACHE}" not in text.split("full-recipe")[0]
    sizes = read_csv(page.parent / "cluster_sizes.csv")
    assert sizes and all(int(r["removed"]) >= int(r["clusters"]) * (int(r["cluster_size"]) - 1) for r in sizes)
    examples = read_csv(page.parent / "examples.csv")
    assert len(examples) == 5 and all(len(r["text"]) > 20 for r in examples)
    timings = {r["stage"]: r["tasks run"] for r in read_csv(page.parent / "timings.csv")}
    assert timings["curate"] not in ("", "0")  # the sample build curated: a count, or "reused" on a rerun
