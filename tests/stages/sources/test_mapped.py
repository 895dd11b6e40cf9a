"""Sources of one's own on real files: JSON lines (plain, gzip, zstd) with nested fields and a language field, a
Parquet folder with the language in the path, a local copy of a Hugging Face dataset through the hf reader."""

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.settings import ConfigError
from stages.sources import FORMATS, HfOptions, MappedOptions
from stages.sources.mapped import path_pattern, split_glob
from tests.helpers import fineweb2_texts, write_lines


def reader(name: str, **options):
    kind = HfOptions if options["reader"] == "hf" else MappedOptions
    return FORMATS[options["reader"]](name, kind(**options))


def read_all(source):
    files = source.list_files()
    return files, list(source.run(files)), source.rejects


def record(text, lang, doc_id=None, **extra):
    meta = {"lang": lang, "url": f"https://example.org/{doc_id}"} | ({"id": doc_id} if doc_id else {})
    return {"body": {"content": text, "words": len(str(text).split())}, "meta": meta, **extra}


def test_jsonl_plain_gzip_zstd_with_nested_fields_and_a_language_field(tmp_path):
    polish, turkish, vietnamese = fineweb2_texts("pol_Latn"), fineweb2_texts("tur_Latn"), fineweb2_texts("vie_Latn")
    write_lines(tmp_path / "pl.jsonl", [record(text, "pl", f"pl-{i}", tags=["a"]) for i, text in enumerate(polish)]
                + [record(polish[0], "pl"),  # no id: named by file and row
                   {"meta": {"id": "no-text", "lang": "pl"}},
                   record(5, "pl", "number"), record(polish[1], "klingon", "klingon"),
                   {"body": {"content": polish[2]}, "meta": {"id": "no-lang"}}, '{"broken": '])
    write_lines(tmp_path / "tr.jsonl.gz", [record(text, "tur", f"tr-{i}") for i, text in enumerate(turkish)])
    write_lines(tmp_path / "more" / "vi.jsonl.zst", [record(text, "vietnamese", f"vi-{i}")
                                                     for i, text in enumerate(vietnamese)])
    write_lines(tmp_path / "more" / "en.json.bz2", [record("Plain English words.", "eng_Latn", "en")])
    (tmp_path / "notes.txt").write_text("not data")
    source = reader("mycorpus", path=str(tmp_path), reader="jsonl", text="body.content", id="meta.id",
                    url="meta.url", lang_field="meta.lang", lang_map={"vietnamese": "vie_Latn"})
    files, docs, rejects = read_all(source)
    assert files == ["more/en.json.bz2", "more/vi.jsonl.zst", "pl.jsonl", "tr.jsonl.gz"]
    assert Counter(d.metadata["lang"] for d in docs) == {"pol_Latn": 12, "tur_Latn": 11, "vie_Latn": 11,
                                                         "eng_Latn": 1}
    assert {d.metadata["lang_source"] for d in docs} == {"upstream"}  # the source's label: LID checks it
    first = next(d for d in docs if d.id == "mycorpus/pl-0")
    assert first.text == polish[0] and first.metadata["url"] == "https://example.org/pl-0"
    assert first.metadata["origin"] == "pl.jsonl:0"
    # every field the mapping does not read: of `meta` nothing is left, of `body` its other field
    assert first.metadata["extra"] == {"body": {"words": len(polish[0].split())}, "tags": ["a"]}
    assert "mycorpus/pl.jsonl:11" in {d.id for d in docs}
    assert sorted((r.reason, r.detail.split(":")[0] if r.detail.startswith("line") else r.detail)
                  for r in rejects) == [
        ("read:bad_record", "line 16"),  # the broken JSON
        ("read:bad_record", "row 12: no body.content field"),
        ("read:bad_record", "row 13: body.content is int, not text"),
        ("read:bad_record", "row 15: no meta.lang field"),
        ("read:unknown_language", "row 14: language 'klingon' (field meta.lang) is no label, no code of "
                                  "configs/languages.csv and not in lang_map"),
    ]
    assert sum(source.stats.read.values()) == len(docs) + len(rejects)  # nothing dropped uncounted


def test_parquet_folder_with_the_language_in_the_path(tmp_path):
    for lang in ("pol_Latn", "tur_Latn", "xx"):
        texts = fineweb2_texts("pol_Latn" if lang == "xx" else lang)
        folder = tmp_path / "data" / lang
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"content": texts, "info": [{"site": f"{lang}.example", "n": i} for i in
                                                            range(len(texts))], "ignored": ["x"] * len(texts)}),
                       folder / "part-0.parquet")
    (tmp_path / "data" / "tur_Latn" / "part-1.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "data" / "tur_Latn" / "README.md").write_text("not data")
    source = reader("web", path=str(tmp_path / "data" / "*" / "part-*.parquet"), reader="parquet", text="content",
                    lang_from_path="{lang}/", metadata=("info.site",))
    files, docs, rejects = read_all(source)
    assert files == ["pol_Latn/part-0.parquet", "tur_Latn/part-0.parquet", "tur_Latn/part-1.parquet",
                     "xx/part-0.parquet"]
    assert source.columns() == ["content", "id", "info"]  # what the mapping reads (an id if any), not `ignored`
    assert Counter(d.metadata["lang"] for d in docs) == {"pol_Latn": 11, "tur_Latn": 11}
    assert docs[0].id == "web/pol_Latn/part-0.parquet:0" and docs[0].metadata["extra"] == {"info.site":
                                                                                          "pol_Latn.example"}
    reasons = Counter(r.reason for r in rejects)
    assert reasons == {"read:unknown_language": 11, "read:corrupt_file": 1}
    assert next(r.detail for r in rejects if r.reason == "read:unknown_language").startswith(
        "row 0: language 'xx' (path) is no label")
    assert sum(source.stats.read.values()) == len(docs) + len(rejects)


def test_dolma_documents_and_languages_detected_or_fixed(tmp_path):
    dolma = [{"id": f"d{i}", "text": text, "source": "web", "metadata": {"url": f"https://example.org/{i}"}}
             for i, text in enumerate(fineweb2_texts("deu_Latn"))]
    write_lines(tmp_path / "docs-0000.json.gz", dolma)
    detected = reader("mydolma", path=str(tmp_path), reader="dolma", lang="detect")
    _, docs, rejects = read_all(detected)
    assert not rejects and len(docs) == 11
    assert (docs[0].metadata["lang"], docs[0].metadata["lang_source"]) == (None, "expected")  # LID labels it
    assert docs[0].metadata["url"] == "https://example.org/0" and docs[0].metadata["extra"]["source"] == "web"
    fixed = reader("code", path=str(tmp_path / "docs-0000.json.gz"), reader="dolma", lang="code_python")
    assert fixed.list_files() == ["docs-0000.json.gz"]
    assert {d.metadata["lang_source"] for d in fixed.run(fixed.list_files())} == {"code"}


def hub_layout(root):
    """A dataset repository as on the Hub: two configs in the card's front matter, splits in file names."""
    news, forum = fineweb2_texts("pol_Latn"), fineweb2_texts("tur_Latn")
    (root / "news").mkdir(parents=True)
    pq.write_table(pa.table({"text": news[:8], "lang": ["pl"] * 8}), root / "news" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": news[8:], "lang": ["pl"] * 3}), root / "news" / "test-00000-of-00001.parquet")
    write_lines(root / "forum" / "part-0.jsonl.gz", [{"text": t, "lang": "tr"} for t in forum])
    (root / "README.md").write_text(
        "---\nlicense: cc-by-4.0\nconfigs:\n- config_name: news\n  data_files:\n  - split: train\n"
        "    path: news/train-*\n  - split: test\n    path: news/test-*\n- config_name: forum\n  default: true\n"
        "  data_files: forum/*.jsonl.gz\n---\n# A corpus\n")


def test_hf_reader_follows_the_dataset_cards_configs_and_splits(tmp_path):
    hub_layout(tmp_path)
    news = reader("hub", path=str(tmp_path), reader="hf", config="news", lang_field="lang")
    files, docs, rejects = read_all(news)
    assert files == ["news/train-00000-of-00001.parquet"] and len(docs) == 8 and not rejects
    assert {d.metadata["lang"] for d in docs} == {"pol_Latn"}
    assert reader("hub", path=str(tmp_path), reader="hf", config="news", split="test",
                  lang_field="lang").list_files() == ["news/test-00000-of-00001.parquet"]
    forum = reader("hub", path=str(tmp_path), reader="hf", lang_field="lang")  # the config marked default
    assert forum.list_files() == ["forum/part-0.jsonl.gz"]
    assert {d.metadata["lang"] for d in forum.run(forum.list_files())} == {"tur_Latn"}
    with pytest.raises(ConfigError, match=r"has no split 'validation' \(splits: train, test\)"):
        reader("hub", path=str(tmp_path), reader="hf", config="news", split="validation", lang="pol_Latn").list_files()
    with pytest.raises(ConfigError, match=r"has no config 'blog' \(configs: news, forum\)"):
        reader("hub", path=str(tmp_path), reader="hf", config="blog", lang="pol_Latn").list_files()


def test_hf_reader_infers_splits_as_the_hub_does_without_configs(tmp_path):
    hub_layout(tmp_path)
    (tmp_path / "README.md").write_text("# no front matter\n")
    (tmp_path / "forum" / "part-0.jsonl.gz").unlink()
    source = reader("hub", path=str(tmp_path), reader="hf", lang="pol_Latn")
    assert source.list_files() == ["news/train-00000-of-00001.parquet"]  # the test split is not read


def test_paths_patterns_and_their_languages():
    assert split_glob("/data/corpus/*/part-*.jsonl.gz", ()) == ("/data/corpus", "*/part-*.jsonl.gz")
    assert split_glob("hf://datasets/acme/web/data/*.parquet", ()) == ("hf://datasets/acme/web/data", "*.parquet")
    assert split_glob("/data/corpus/a.jsonl.zst", (".jsonl.zst",)) == ("/data/corpus", "a.jsonl.zst")
    assert split_glob("/data/corpus/", (".jsonl",)) == ("/data/corpus", None)
    cases = {"{lang}/": "deu_Latn/x/part.jsonl", "data/{lang}": "data/deu_Latn/train/0.parquet",
             "{lang}.jsonl.gz": "deu_Latn.jsonl.gz", "*/{lang}-*.parquet": "crawl/deu_Latn-0.parquet",
             "**/lang={lang}/": "a/b/lang=deu_Latn/0.parquet"}
    for template, path in cases.items():
        assert path_pattern(template).match(path).group("lang") == "deu_Latn", template
    assert path_pattern("data/{lang}").match("database/deu_Latn") is None


@pytest.mark.parametrize("options, message", [
    ({}, "give the language one way: lang (a label, or detect), lang_field or lang_from_path"),
    ({"lang": "eng_Latn", "lang_field": "lang"}, "; got lang and lang_field"),
    ({"lang": "english"}, "lang: 'english' is neither a label"),
    ({"lang_field": "lang", "lang_map": {"en": "English"}}, "lang_map: en: 'English' is not a label"),
    ({"lang": "eng_Latn", "lang_map": {"en": "eng_Latn"}}, "lang_map: maps the codes of lang_field"),
    ({"lang_from_path": "data/"}, "lang_from_path: 'data/' must hold {lang} once"),
])
def test_the_language_options_are_checked(options, message):
    with pytest.raises(ValueError) as error:
        MappedOptions(path="/tmp", reader="jsonl", **options)
    assert message in str(error.value)
