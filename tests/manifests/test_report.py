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

SECTIONS = ["languages", "annealing", "sources", "curation", "lengths", "quality", "recipe", "full-recipe", "shards",
            "terms", "examples", "use", "citation"]
FIGURES = ["tokens_per_language", "annealing", "tokens_per_source", "kept_vs_rejected", "reject_reasons", "lengths",
           "quality"]


@pytest.fixture(scope="module")
def report(sample_build, tokenizers, tmp_path_factory):
    """The data card of a copy of the sample build: (out directory, its index.html)."""
    out = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(sample_build[0], out)
    for card in (out / "README.md", out / "phase1" / "README.md"):
        card.unlink()  # the report writes them again
    return out, Path(build_report(Layout(out), "phase1", load_gemma2(tokenizers["gemma2"]).decode))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_section_and_figure_is_there(report):
    _, page = report
    text = page.read_text()
    places = [text.index(f'<section id="{section}">') for section in SECTIONS]
    assert places == sorted(places)  # in this order: the figures first, the recipe after them
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
    assert re.match(r"22 of 60 languages \+ code have data ", recipe["languages"])
    assert recipe["tokenizer"] == "${MMCORPUS_CACHE}/tokenizer.gemma"  # the recipe's spelling, not the machine's path
    assert recipe["language identification"].startswith(
        "fastText (fasttext-numpy2-wheel 0.9.2), model ${MMCORPUS_CACHE}/lid.176.ftz, sha256 8f3472cf")
    assert recipe["source fineweb2"] == "../samples/fineweb2"  # relative to the recipe's folder, configs/
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
    assert "min_similarity: 0.7" in text
    sizes = read_csv(page.parent / "cluster_sizes.csv")
    assert sizes and all(int(r["removed"]) >= int(r["clusters"]) * (int(r["cluster_size"]) - 1) for r in sizes)
    examples = read_csv(page.parent / "examples.csv")
    assert len(examples) == 5 and all(len(r["text"]) > 20 for r in examples)
    timings = {r["stage"]: r["tasks run"] for r in read_csv(page.parent / "timings.csv")}
    assert timings["curate"] not in ("", "0")  # the sample build curated: a count, or "reused" on a rerun


def test_the_page_opens_on_figures_and_folds_the_recipe(report):
    _, page = report
    text = page.read_text()
    assert text.index("<img") < text.index('<section id="recipe">')
    folded = text.split('<section id="full-recipe">')[1].split("</section>")[0]
    assert "<details><summary>" in folded and "<pre>" not in folded.split("<details>")[0]
    assert "min_similarity: 0.7" in folded.split("<details>")[1]  # the YAML: inside the folded part only
    assert "<details open" not in text


def test_no_path_of_the_building_machine_and_no_false_not_installed(report):
    _, page = report
    for name in [page.name, *(p.name for p in page.parent.glob("*.csv"))]:
        text = (page.parent / name).read_text()
        for root in ("/root", "/work", "/tmp", "/home"):
            assert root not in text, (name, root)
    assert "not installed" not in page.read_text()


def test_text_left_numbers_right(report):
    _, page = report
    text = page.read_text()
    assert "td { border: 1px solid #ddd; padding: 2px 8px; text-align: left;" in text
    row = text.split('<table id="table-languages">')[1].split("</tr>")[1]  # the first language's row
    cells = re.findall(r"<td( class=\"num\")?>([^<]*)</td>", row)
    assert cells[0] == ("", cells[0][1]) and cells[1][0] == ""  # lang, name: text
    assert all(number == ' class="num"' for number, _ in cells[2:6])  # available, target, written, epochs
    assert '<th class="num">written</th>' in text and "<th>lang</th>" in text


def test_report_writes_both_hugging_face_cards_again(report):
    out, _ = report
    assert "## Languages" in (out / "phase1" / "README.md").read_text()
    assert "config_name: phase1" in (out / "README.md").read_text()
