"""The recipe: one typed tree whose every key is checked; one line naming the file, the key and the closest valid key
for a typo; relative paths against the file that names them; one recipe file, dotted overrides, the resolved
recipe shown and recorded."""

import json
import shutil

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_recipe
from stages.paths import CONFIG_DIR
from stages.settings import ConfigError


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def copy_config(tmp_path, name: str, change) -> str:
    data = yaml.safe_load((CONFIG_DIR / name).read_text())
    change(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


@pytest.mark.parametrize(
    "section, name, change, key, closest",
    [
        ("quality", "quality.yaml", lambda d: d["fixed"].update(min_doc_word=50), "fixed.min_doc_word",
         "min_doc_words"),
        ("sources", "sources.yaml", lambda d: d.update(shard_token=100), "shard_token", "shard_tokens"),
        ("sources", "sources.yaml", lambda d: d["sources"]["fineweb2"].update(include_remove=True),
         "sources.fineweb2.include_remove", "include_removed"),
        ("lid", "lid.yaml", lambda d: d.update(max_char=500), "max_char", "max_chars"),
        ("dedup", "dedup.yaml", lambda d: d["minhash"].update(band=14), "minhash.band", "bands"),
        ("phases", "phases.yaml", lambda d: d[3]["variants"]["eng"].update(temprature=0.3),
         "3.variants.eng.temprature", "temperature"),
    ],
)
def test_unknown_key_names_file_key_and_closest(tmp_path, capsys, section, name, change, key, closest):
    path = copy_config(tmp_path, name, change)
    if section == "quality":
        shutil.copy(CONFIG_DIR / "fineweb2-thresholds.yaml", tmp_path)
    if section == "sources":
        shutil.copytree(CONFIG_DIR.parent / "samples", tmp_path.parent / "samples", dirs_exist_ok=True)
    assert main(["build", "--phase", "1", f"--{section}", path, "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"mmcorpus: error: {path}: {key}: unknown key"), line
    assert f"did you mean '{closest}'" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "section, name, change, message",
    [
        ("lid", "lid.yaml", lambda d: d.update(upstream="trsut"), "upstream: must be one of 'trust', 'verify'"),
        ("dedup", "dedup.yaml", lambda d: d.update(kinds=["minhahs"]), "kinds.0: must be one of 'exact'"),
        ("quality", "quality.yaml", lambda d: d["fixed"].update(min_doc_words="many"), "expected a number"),
        ("phases", "phases.yaml", lambda d: d[2].update(seq_len=8192.5), "2.seq_len: expected a whole number"),
    ],
)
def test_dry_run_rejects_what_a_build_rejects(tmp_path, capsys, section, name, change, message):
    path = copy_config(tmp_path, name, change)
    if section == "quality":
        shutil.copy(CONFIG_DIR / "fineweb2-thresholds.yaml", tmp_path)
    assert main(["build", "--phase", "1", f"--{section}", path, "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert path in line and message in line, line


def test_relative_paths_resolve_against_the_file_that_names_them(tmp_path, capsys):
    copy = tmp_path / "quality.yaml"
    shutil.copy(CONFIG_DIR / "quality.yaml", copy)  # its languages_file is not beside the copy
    assert main(["build", "--phase", "1", "--quality", str(copy), "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "fineweb2-thresholds.yaml") in line and "lid.yaml" not in line, line
    shutil.copy(CONFIG_DIR / "fineweb2-thresholds.yaml", tmp_path)
    assert main(["build", "--phase", "1", "--quality", str(copy), "--dry-run"]) == 0


def test_one_recipe_file_inline_equals_the_section_files(tmp_path):
    sections = {name: yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
                for name in ("sources", "tokenizers", "lid", "dedup", "phases")}
    sections["sources"]["sources"] = {name: dict(entry, path=str((CONFIG_DIR / entry["path"]).resolve()))
                                      for name, entry in sections["sources"]["sources"].items()}
    sections["quality"] = str(CONFIG_DIR / "quality.yaml")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(sections, allow_unicode=True))
    inline, default = load_recipe(recipe_file).to_dict(), load_recipe().to_dict()
    assert inline.pop("files") != default.pop("files")
    assert inline == default


def test_dotted_overrides_change_one_value_and_are_checked(tmp_path, capsys):
    assert main(["config", "show", "--set", "quality.fixed.min_doc_words=100",
                 "--set", "sources.sources.fineweb2.include_removed=true",
                 "--set", "phases.3.variants.eng.temperature=0.4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["quality"]["fixed"]["min_doc_words"] == 100
    assert shown["sources"]["sources"]["fineweb2"]["include_removed"] is True
    assert load_recipe(overrides=["phases.3.variants.eng.temperature=0.4"]).phases.phase(3, "eng").temperature == 0.4
    assert main(["config", "show", "--set", "quality.fixed.min_doc_word=100"]) == 2
    assert "--set quality.fixed.min_doc_word=100: unknown key 'min_doc_word' (did you mean 'min_doc_words'?)" in \
        one_error_line(capsys)
    assert main(["config", "show", "--set", "qualty.x=1"]) == 2
    assert "did you mean 'quality'" in one_error_line(capsys)
    with pytest.raises(ConfigError, match="min_doc_words: expected a number"):
        load_recipe(overrides=["quality.fixed.min_doc_words=[1, 2]"])


def test_config_fields_lists_every_setting_with_help(capsys):
    assert main(["config", "fields"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("quality.fixed.min_doc_words: ") and "# Gopher: min words" in line for line in lines)
    assert any(line.startswith("sources.sources.fineweb2.include_removed: bool = False") for line in lines)
    assert "lid.min_score.default: float = 0.5  # minimum model probability for a detected label (must be in [0, 1])" \
        in lines
    assert all("#" in line for line in lines)


@pytest.mark.slow  # builds the samples
def test_run_table_records_the_whole_recipe(sample_build, capsys):
    out, _ = sample_build
    sql = "SELECT config, versions, git_commit FROM run WHERE phase = 'phase1'"
    assert main(["query", "--out", str(out), "--format", "json", sql]) == 0
    [row] = json.loads(capsys.readouterr().out)
    config = json.loads(row["config"])
    assert config["recipe"]["quality"]["fixed"]["min_doc_words"] == 50
    assert config["recipe"]["lid"]["upstream"] == "trust" and config["recipe"]["dedup"]["minhash"]["bands"] == 14
    assert config["tokenizer"].startswith("${MMCORPUS_CACHE}")
    assert config["assets"]["tokenizer:gemma2"]["sha256"].startswith("61a7b147")
    model = config["assets"]["lid:model"]["path"]
    assert model.endswith("lid.176.ftz") and "$" not in model
    assert config["assets"]["languages_file"]["sha256"]
    assert json.loads(row["versions"])["duckdb"] == "2.0.0"
    assert row["git_commit"]  # the project's checkout is a git repository
    assert config["started"].endswith("+00:00")
