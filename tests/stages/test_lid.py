"""LID on real text in several scripts with the default model (lid.176), and the label rules around it."""

import dataclasses
import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_recipe
from pipeline.sections import LID
from stages.base import Document
from stages.languages import LanguageSet
from stages.lid import FastTextLid, LanguageId, MinScore, load_fasttext
from stages.lid_model import CompiledModel, WordCache
from tests.helpers import SAMPLES, udhr


def doc(text: str, lang: str | None, lang_source: str, score: float | None = None, source: str = "dolma") -> Document:
    return Document(text=text, id=f"{source}/d", metadata=dict(source=source, lang=lang, lang_source=lang_source,
                                                              lang_score=score, origin="f:0"))


@pytest.fixture(scope="module")
def config(tokenizers):  # the assets (model included) come with `make setup`
    return load_recipe().lid  # FineWeb2's minimum upstream scores come from the quality section


@pytest.mark.parametrize("lang", ["deu_Latn", "rus_Cyrl", "cmn_Hani", "arb_Arab", "hin_Deva", "jpn_Jpan",
                                  "tha_Thai", "kor_Hang", "heb_Hebr", "ell_Grek", "khm_Khmr", "mya_Mymr"])
def test_detects_lang_script_on_real_text(config, lang):
    [(label, score)] = FastTextLid(config.model).predict([udhr(lang)])
    assert label == lang
    assert score > 0.5  # lid.176 gives short Chinese some Japanese probability (0.73 here)


def test_script_comes_from_the_text():
    model = FastTextLid(LID.load().model)
    assert model.normalize("__label__sr", "Сва људска бића рађају се слободна") == "srp_Cyrl"
    assert model.normalize("__label__sr", "Sva ljudska bića rađaju se slobodna") == "srp_Latn"
    assert model.normalize("__label__ja", "人人生而自由") == "jpn_Jpan"
    assert model.normalize("__label__deu_Latn", "") == "deu_Latn"  # GlotLID labels pass through


def test_detected_label_replaces_the_expected_one(config):
    stage = LanguageId(config)
    [kept] = stage.run([doc(udhr("fra_Latn"), "eng_Latn", "expected")])
    assert kept.metadata["lang"] == "fra_Latn" and kept.metadata["lang_score"] > 0.8


def test_low_score_and_other_language_are_rejected_with_the_prediction(config, tmp_path):
    strict = dataclasses.replace(config, min_score=MinScore(0.9999))
    stage = LanguageId(strict)
    assert list(stage.run([doc("ok ok 123 yes", "eng_Latn", "expected")])) == []
    [reject] = stage.rejects
    assert reject.reason == "lid:low_score score<0.9999" and reject.detail.startswith("predicted ")
    (tmp_path / "counts.csv").write_text("language,only\neng,100\ndeu,0\n")
    narrow = dataclasses.replace(config, languages=LanguageSet("only", tmp_path / "counts.csv"))
    stage = LanguageId(narrow)
    assert list(stage.run([doc(udhr("deu_Latn"), "eng_Latn", "expected")])) == []
    assert [(r.reason, r.detail.split()[1]) for r in stage.rejects] == [("lid:other_language", "deu_Latn")]


def test_upstream_label_unknown_to_the_model_is_kept_or_rejected_as_configured(config):
    xhosa = udhr("xho_Latn")
    assert "xho" not in FastTextLid(config.model).known
    stage = LanguageId(config)
    [kept] = stage.run([doc(xhosa, "xho_Latn", "upstream", 0.95, "fineweb2")])
    assert kept.metadata["lang"] == "xho_Latn"  # never relabelled by a model that cannot know it
    assert stage.stats.notes[("fineweb2", "xho_Latn")]["lid:unknown_to_model"] == 1
    stage = LanguageId(dataclasses.replace(config, unknown_to_model="reject"))
    assert list(stage.run([doc(xhosa, "xho_Latn", "upstream", 0.95, "fineweb2")])) == []
    assert [r.reason for r in stage.rejects] == ["lid:unknown_to_model"]


def test_upstream_disagreement_noted_or_rejected(config):
    german_labelled_french = doc(udhr("deu_Latn"), "fra_Latn", "upstream", 0.95, "fineweb2")
    stage = LanguageId(config)
    [kept] = stage.run([german_labelled_french])
    assert kept.metadata["lang"] == "fra_Latn" and kept.metadata["lid_predicted"] == "deu_Latn"
    assert stage.stats.notes[("fineweb2", "fra_Latn")]["lid:upstream_disagrees"] == 1
    stage = LanguageId(dataclasses.replace(config, upstream="verify"))
    assert list(stage.run([doc(udhr("deu_Latn"), "fra_Latn", "upstream", 0.95, "fineweb2")])) == []
    assert [r.reason for r in stage.rejects] == ["lid:disagrees_with_upstream"]


def test_upstream_score_below_fineweb2_minimum(config):
    stage = LanguageId(config)
    assert list(stage.run([doc(udhr("deu_Latn"), "deu_Latn", "upstream", 0.5, "fineweb2")])) == []
    assert [r.reason for r in stage.rejects] == ["lid:low_score upstream_score<0.821"]


def test_code_is_not_run_through_the_text_model(config):
    stage = LanguageId(config)
    [kept] = stage.run([doc("def f():\n    return 1\n", "code_python", "code", source="starcoder")])
    assert kept.metadata["lang"] == "code_python" and "lid_predicted" not in kept.metadata


@pytest.mark.parametrize("upstream, policy, outcome", [
    ("en", "trust", None), ("eng_Latn", "verify", None),  # agrees with the subset's eng_Latn
    ("de", "trust", "noted"), ("deu", "verify", "lid:disagrees_with_upstream"),
])
def test_dolma_metadata_language_is_checked_against_the_expected_one(config, upstream, policy, outcome):
    stage = LanguageId(dataclasses.replace(config, upstream=policy))
    document = doc("All human beings are born free and equal in dignity and rights. They are endowed with reason "
                   "and conscience.", "eng_Latn", "expected")
    document.metadata["upstream_lang"] = upstream
    kept = list(stage.run([document]))
    if outcome == "lid:disagrees_with_upstream":
        assert not kept and stage.rejects[0].reason == outcome
    else:
        assert kept and kept[0].metadata["lang"] == "eng_Latn"
        noted = [label for notes in stage.stats.notes.values() for label in notes.elements()]
        assert noted == (["lid:upstream_disagrees"] if outcome == "noted" else [])


def sample_texts() -> list[str]:
    """Every text of the samples: FineWeb2 (all languages), Dolma, MegaWika."""
    texts = [text for path in sorted((SAMPLES / "fineweb2").rglob("*.parquet"))
             for text in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    for path in sorted((SAMPLES / "dolma").rglob("*.json.gz")) + sorted((SAMPLES / "megawika").rglob("*.jsonl")):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as lines:
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
    return texts


STRESS = ["", " ", "\t \n", "a", "</s>", "ab </s> cd", "x\0y", "__label__en", "__label__de Haus", "__labe Haus",
          " leading and trailing ", "😀🎉 emoji only", "mixed: Привет мир, hello world, مرحبا بالعالم, 你好世界",
          "ꯃꯤꯇꯩ ꯃꯌꯦꯛ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 astral", "x" * 3000, "é" * 500, "def f(x):\n    return x ** 2  # code",
          "\u00a0nbsp\u2003em\u3000ideographic spaces", "ĳ ǆ ﬁ ligatures", "a\u0301 combining"]


def test_compiled_prediction_gives_fasttexts_labels_and_probabilities_bit_for_bit(config):
    """The compiled prediction against fastText's own on every text of the samples and on texts made to stress
    its word and n-gram splitting (scripts, emoji, astral characters, label-like and </s> tokens, NUL bytes)."""
    compiled = FastTextLid(config.model)
    assert isinstance(compiled.model, CompiledModel)  # lid.176: hierarchical softmax, quantized with norms
    reference = load_fasttext(str(config.model.check()))
    texts = sample_texts() + STRESS
    cleaned = [" ".join(text[: config.max_chars].split()) for text in texts]
    labels, scores = reference.predict(cleaned, k=1)
    expected = ([label[0] for label in labels], [float(s[0]) for s in scores])
    assert compiled.model.predict(cleaned) == expected
    assert len(texts) > 300
    # a word cache of 8 words, 64 rows and 64 bytes: emptied again and again, long words never held
    tiny = WordCache(np.full(16, -1, np.int32), np.zeros((8, 4), np.int64), np.zeros(64, np.int32),
                     np.zeros(64, np.uint8))
    assert dataclasses.replace(compiled.model, cache=tiny).predict(cleaned) == expected
