"""Language identification: label every document `lang_Script`, check upstream labels, drop what fails.

How a document is handled depends on where its label came from (the reader sets `metadata["lang_source"]`):
- `upstream` (FineWeb2's GlotLID label, MegaWika's wiki): the label stays; the model's prediction is recorded
  in `lid_predicted` and a disagreement is noted, or rejected when `upstream: verify`. An upstream score
  below FineWeb2's per-language minimum is rejected as `lid:low_score`.
- `expected` (Dolma subsets, ProLong domains): the model decides; below the minimum score -> `lid:low_score`.
  A language the record's own metadata names (Dolma's `metadata.language`) is checked against the expected
  label as an upstream label is against the model: a disagreement is noted, or rejected when `upstream: verify`.
- `code`: programming languages are not natural languages; the label stays.
Any label whose language is outside the configured set is rejected as `lid:other_language`, and a label that is
not of the form `lang_Script` or `code_<language>` (it becomes a folder name) as `lid:invalid_label`.
Model labels are normalized to FineWeb2's form: `__label__deu_Latn` stays; ISO 639-1 / Wikipedia codes
(`__label__de`) map through configs/languages.csv, with the script taken from the text itself when the
language is written in several (`other_scripts` there: Serbian in Latin letters is `srp_Latn`).
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from stages.assets import AssetSpec
from stages.base import BatchStage, Document
from stages.languages import LanguageSet, base_language, iso639_3, other_scripts, short_code_labels, valid_label
from stages.lid_model import CompiledModel, load_compiled
from stages.settings import setting
from stages.text import dominant_script

if TYPE_CHECKING:
    import fasttext


@dataclass(frozen=True)
class MinScore:
    default: float = setting(0.5, help="minimum model probability for a detected label", ge=0, le=1)
    overrides: dict[str, float] = setting(factory=dict, help="minimum by lang_Script or ISO 639-3 code", ge=0, le=1)


@dataclass(frozen=True)
class LidConfig:
    """Language identification: a fastText-format model by local path, label handling, thresholds."""

    model: AssetSpec = setting(help="the fastText-format model (lid.176 by default; GlotLID v3 for the recipe)")
    languages: LanguageSet = setting(factory=LanguageSet, help="the labels the pool keeps; others are "
                                                               "lid:other_language")
    upstream: Literal["trust", "verify"] = setting(
        "trust", help="a source's own label: keep it (trust; a disagreement is noted) or reject a disagreement")
    unknown_to_model: Literal["keep", "reject"] = setting(
        "keep", help="an upstream label the model has no class for: keep (noted) or reject")
    min_score: MinScore = setting(factory=MinScore, help="minimum model probability for detected labels")
    max_chars: int = setting(1000, help="characters of a document the model reads", ge=1)
    # FineWeb2's minimum upstream score by lang_Script: the quality section's rows, given by the recipe's loader
    upstream_min_scores: dict[str, float] = field(default_factory=dict, repr=False, metadata={"derived": True})

    def threshold(self, label: str) -> float:
        overrides = self.min_score.overrides
        return overrides.get(label, overrides.get(base_language(label), self.min_score.default))


@cache
def load_fasttext(path: str) -> "fasttext.FastText._FastText":
    """One model per worker process: Ray reuses workers across tasks."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence its load-time warning
    return fasttext.load_model(path)


@cache
def load_model(path: str) -> "CompiledModel | fasttext.FastText._FastText":
    """The compiled prediction where the model allows it (stages/lid_model.py: the same labels and probabilities,
    about 4x as fast), else fastText's own; one per worker process."""
    return load_compiled(Path(path)) or load_fasttext(path)


class FastTextLid:
    """A fastText LID model with labels normalized to `lang_Script`."""

    def __init__(self, spec: AssetSpec, max_chars: int = 1000) -> None:
        local = spec.check()
        if local is None:
            raise FileNotFoundError(f"LID model {spec.path} must be a local file")
        self.model = load_model(str(local))
        self.max_chars = max_chars
        self.short_codes = short_code_labels()
        self.other_scripts = other_scripts()
        labels = self.model.labels if isinstance(self.model, CompiledModel) else self.model.get_labels()
        self.known = {base_language(self.normalize(label, "")) for label in labels}

    def normalize(self, label: str, text: str) -> str:
        label = label.removeprefix("__label__")
        if "_" in label:  # already lang_Script (GlotLID)
            return label
        lang, script = self.short_codes.get(label, f"{label}_Zzzz").split("_")
        if text and lang in self.other_scripts:  # only these need a look at the letters
            found = dominant_script(text, sample=200)
            if found in self.other_scripts[lang]:
                script = found
        return f"{lang}_{script}"

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, probability) per text, in one batched call."""
        cleaned = [" ".join(text[: self.max_chars].split()) for text in texts]
        if isinstance(self.model, CompiledModel):
            labels, scores = self.model.predict(cleaned)
        else:
            found, probabilities = self.model.predict(cleaned, k=1)
            labels, scores = [label[0] for label in found], [float(score[0]) for score in probabilities]
        return [(self.normalize(label, text), score)
                for label, score, text in zip(labels, scores, cleaned, strict=True)]


@cache
def fasttext_lid(spec: AssetSpec, max_chars: int) -> FastTextLid:
    """One per worker process and model: normalizing its labels takes 1.4 ms, a task of a small file (ten
    documents) hardly more."""
    return FastTextLid(spec, max_chars)


class LanguageId(BatchStage):
    name = "lid"

    def __init__(self, config: LidConfig) -> None:
        super().__init__()
        self.config = config
        self.languages = config.languages.resolve()
        self.model = fasttext_lid(config.model, config.max_chars)

    def process(self, batch: list[Document]) -> Iterator[Document]:
        text_docs = [doc for doc in batch if doc.metadata.get("lang_source") != "code"]
        with self.track_time(batch):
            predictions = dict(zip(map(id, text_docs), self.model.predict([d.text for d in text_docs]), strict=True))
        for doc in batch:
            prediction = predictions.get(id(doc))
            reason = self._decide(doc, prediction) if prediction else None
            if reason is None and not valid_label(doc.metadata["lang"]):
                reason = "lid:invalid_label"
            elif reason is None and base_language(doc.metadata["lang"]) not in self.languages:
                reason = "lid:other_language"
            if reason:
                detail = f"predicted {prediction[0]} {prediction[1]:.2f}" if prediction else None
                if reason == "lid:invalid_label":
                    detail = f"label {doc.metadata['lang']!r:.80}"
                    doc.metadata["lang"] = None  # never a folder name
                self.reject(doc, reason, detail)
            else:
                yield self.keep(doc)

    def _decide(self, doc: Document, prediction: tuple[str, float]) -> str | None:
        """Set the document's label and score from the prediction; return a reject reason or None."""
        meta = doc.metadata
        predicted, score = prediction
        meta["lid_predicted"], meta["lid_score"] = predicted, score
        if meta.get("lang_source") != "upstream":
            expected = meta["lang"]
            meta["lang"], meta["lang_score"] = predicted, score
            if meta.get("upstream_lang") and iso639_3(meta["upstream_lang"]) != base_language(expected):
                if self.config.upstream == "verify":
                    return "lid:disagrees_with_upstream"
                self.note(doc, "lid:upstream_disagrees")
            threshold = self.config.threshold(predicted)
            return f"lid:low_score score<{threshold}" if score < threshold else None
        upstream = meta["lang"]
        if base_language(predicted) != base_language(upstream):
            if base_language(upstream) not in self.model.known:
                if self.config.unknown_to_model == "reject":
                    return "lid:unknown_to_model"
                self.note(doc, "lid:unknown_to_model")
            elif self.config.upstream == "verify":
                return "lid:disagrees_with_upstream"
            else:
                self.note(doc, "lid:upstream_disagrees")
        elif meta.get("lang_score") is None:
            meta["lang_score"] = score  # MegaWika has no score of its own: the agreeing model's
        if meta.get("lang_score") is None:
            return None
        threshold = self.config.upstream_min_scores.get(upstream, 0.0)
        return f"lid:low_score upstream_score<{threshold}" if meta["lang_score"] < threshold else None
