"""`<out>/<phase>/README.md`: a Hugging Face dataset card, written with every build (and by `mmcorpus report`)
from the manifest through DuckDB. Its YAML front matter names the shards as the data files, so
`datasets.load_dataset("<out>/<phase>")` loads them (and not the manifest's Parquet beside them), and gives their
`dataset_info` (features, rows, bytes); its body says where the data came from, under which terms, which of the
recipe's languages have data, what was removed and why, what a row holds, and what the data is not for.

`<out>/README.md`, rewritten with it, holds a `datasets` config per built phase: `load_dataset("<out>", "phase1")`.
"""

import json
import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING

import icu
import yaml

from manifests.catalog import CURATION_STAGES, loaded
from manifests.languages import phase_coverage
from manifests.layout import Layout
from manifests.schemas import SHARD

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# The terms each source's text comes under are the recipe's (a source's `license`, `description`, `homepage`,
# `citation`; the named sources' own by default), as the run recorded them. The tokenizer's:
TOKENIZER_TERMS = "the tokens are Gemma 2 ids: the tokenizer is under the Gemma Terms of Use"
COLUMNS = {
    "input_ids": "Gemma 2 token ids of one chunk, bos first and eos last",
    "doc_id": "the document's id: `<source>/<upstream id>` (`~n` appended when an upstream id was shared)",
    "chunk": "which chunk of the document (0-based)",
    "source": "the source's name in the recipe: fineweb2, dolma, megawika, prolong, starcoder or one of your own",
    "lang": "ISO 639-3 + ISO 15924 (`deu_Latn`), or `code_<language>`",
    "epoch": "which repetition of the document (0-based): languages with little text are repeated, at most the "
             "phase's epoch cap",
}
CITATION = """@article{marone2025mmbert,
  title={mmBERT: A Modern Multilingual Encoder with Annealed Language Learning},
  author={Marone, Marc and Weller, Orion and Fleshman, William and Yang, Eugene and Lawrie, Dawn and
          Van Durme, Benjamin},
  journal={arXiv preprint arXiv:2509.06888},
  year={2025}
}"""
INTENDED_USE = ("Pre-training and evaluating multilingual masked-language-model encoders (mmBERT-style), and "
                "studying the effect of the mixture: language shares, repetition, curation.")
LIMITATIONS = ("Web text carries the biases, errors and personal information of the web; filtering and "
               "deduplication reduce but do not remove them. Language labels come from a fastText model and upstream "
               "labels, and are least reliable for the smallest languages and for short documents. Low-resource "
               "languages are repeated up to the epoch cap, so their text is seen several times. The chunks are "
               "tokenized for Gemma 2's vocabulary only.")
EXAMPLES = "The first 300 characters of the first chunk of a document in each of the five largest languages, decoded:"
# Per language, the share of its documents that curation rejected (LID, quality, dedup...), for phase `?`
REMOVED_IN_CURATION = f"""
    SELECT lang, sum(rejected) FILTER (WHERE stage IN {CURATION_STAGES})::DOUBLE
                 / nullif(sum(rejected) FILTER (WHERE stage IN {CURATION_STAGES})
                          + sum(kept) FILTER (WHERE stage = 'tokenize'), 0) AS removed
    FROM stages WHERE phase = ? GROUP BY lang"""
SIZES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
         (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"), (1e12, "100B<n<1T")]


def language_name(lang: str) -> str:
    """`deu_Latn` -> `German (Latn)`; code and unknown codes as they are."""
    if lang.startswith("code_"):
        return f"{lang.removeprefix('code_')} (code)"
    code, _, script = lang.partition("_")
    name = icu.Locale(code).getDisplayLanguage(icu.Locale("en"))
    return f"{name} ({script})" if name != code else lang


def examples(layout: Layout, phase_id: str, languages: list[str],
             decode: Callable[[list[int]], str]) -> list[tuple[str, str, str]]:
    """(language name, doc_id, text) of one document's first chunk (the lowest chunk, then doc_id) per language,
    in one scan of the shards (the chunks of a document's epochs are the same tokens)."""
    import duckdb

    with duckdb.connect(config={"threads": 2}) as con:
        con.register("chunks", layout.dataset(layout.glob(Layout.shards_glob(phase_id)), SHARD))
        first = {lang: (doc_id, ids) for lang, doc_id, ids in con.execute(
            """SELECT lang, arg_min(doc_id, (chunk, doc_id)), arg_min(input_ids, (chunk, doc_id)) FROM chunks
               WHERE list_contains(?, lang) GROUP BY lang""", [languages]).fetchall()}
    return [(language_name(lang), first[lang][0], decode(first[lang][1][1:-1])[:300]) for lang in languages
            if lang in first]


TERMS_COLUMNS = ["source", "licence", "terms", "homepage", "tokens here"]


def terms_rows(sources: dict[str, dict], tokens: list[tuple[str, int]]) -> list[tuple]:
    """A row per source of the phase, (name, licence, terms, homepage, tokens), from the recipe's entries."""
    return [(name, *(sources.get(name, {}).get(key) for key in ("license", "description", "homepage")), count)
            for name, count in tokens]


def license_metadata(sources: dict[str, dict], names: list[str]) -> dict:
    """The card's `license`: the sources' own when they share one the Hub knows, else `other`, naming each
    source's in `license_details`."""
    licenses = {name: sources.get(name, {}).get("license") or "not given" for name in names}
    shared = set(licenses.values())
    if len(shared) == 1 and not shared & {"other", "not given"}:
        return {"license": shared.pop()}
    return {"license": "other", "license_name": "mixed-per-source" if len(shared) > 1 else "per-source-terms",
            "license_details": "; ".join(f"{name}: {license}" for name, license in licenses.items())
            + " (the card's Sources and terms)"}


def citations(sources: dict[str, dict], names: list[str]) -> str:
    """mmBERT's citation, then each source's that the recipe gives."""
    return "\n\n".join([CITATION, *(sources[name]["citation"].strip() for name in names
                                     if (sources.get(name) or {}).get("citation"))])


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZES if rows < limit), "n>1T")


def display(value: object) -> str:
    """A table cell of the cards: booleans as yes or blank, numbers with thousands separators."""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    def cell(value: object) -> str:
        text = " ".join(display(value).split()).replace("|", "\\|")
        # `<` and `>` would open HTML outside code spans; inside one (odd pieces) the Hub shows them as they are
        return "`".join(piece if i % 2 else piece.replace("<", "&lt;").replace(">", "&gt;")
                        for i, piece in enumerate(text.split("`")))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def hub_features(schema: "pa.Schema") -> list[dict]:
    """The schema's columns as the Hub's `dataset_info.features` spells them (`datasets.Features`' YAML)."""
    return [{"name": f.name, "list": str(f.type.value_type)} if f.type.num_fields else {"name": f.name,
                                                                                      "dtype": str(f.type)}
            for f in schema]


def dataset_info(con: "duckdb.DuckDBPyConnection", layout: Layout, phase_id: str) -> dict:
    """A phase's `dataset_info`: features, and the train split's rows and bytes. num_bytes is the shards'
    uncompressed size (their Parquet footers: no shard is read), download_size their files'."""
    rows, files = con.execute("SELECT sum(rows), sum(bytes) FROM shards WHERE phase = ?", [phase_id]).fetchone()
    footers = [fragment.metadata for fragment in
               layout.dataset(layout.glob(Layout.shards_glob(phase_id)), SHARD).get_fragments()]
    data = sum(footer.row_group(group).column(column).total_uncompressed_size for footer in footers
               for group in range(footer.num_row_groups) for column in range(footer.num_columns))
    return {"features": hub_features(SHARD), "splits": [{"name": "train", "num_bytes": int(data or 0),
                                                          "num_examples": int(rows or 0)}],
            "download_size": int(files or 0), "dataset_size": int(data or 0)}


def front_matter(front: dict) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---"


def write_dataset_card(layout: Layout, phase_id: str, decode: Callable[[list[int]], str] | None = None) -> str:
    """The phase's card, then the output's (its configs name every built phase)."""
    with loaded(layout) as con:
        def rows(sql: str, params: list | None = None) -> list[tuple]:
            return con.execute(sql, [phase_id] if params is None else params).fetchall()

        shards, tokens = rows("SELECT sum(rows), sum(tokens) FROM shards WHERE phase = ?")[0]
        phase = rows("""SELECT json_extract(config, '$.phase'), json_extract(config, '$.recipe.sources.sources'),
                                started, git_commit, seed FROM run WHERE phase = ?""")
        setting, sources, started, commit, seed = phase[0]
        coverage = phase_coverage(con, phase_id)
        info = dataset_info(con, layout, phase_id)
        languages = rows("""
            SELECT lang, sum(tokens) AS tokens, sum(tokens) / sum(sum(tokens)) OVER () AS share,
                   sum(tokens)::DOUBLE / nullif(sum(available_tokens), 0) AS epochs, bool_or(capped)
            FROM mixture WHERE phase = ? GROUP BY lang ORDER BY tokens DESC""")
        removal = dict(rows(REMOVED_IN_CURATION))
        by_source = rows("SELECT source, sum(tokens) FROM mixture WHERE phase = ? GROUP BY 1 ORDER BY 2 DESC")
        removed = rows(f"""SELECT stage, reason, sum(docs) FROM reject_reasons WHERE phase = ? AND stage IN
                           {CURATION_STAGES} GROUP BY ALL ORDER BY 3 DESC LIMIT 15""")
        quality = rows(PHASE_QUALITY)
        views = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        clusters = rows("""SELECT kind, CASE WHEN cluster_size <= 2 THEN '2' WHEN cluster_size <= 5 THEN '3-5'
                                            WHEN cluster_size <= 100 THEN '6-100' ELSE '>100' END AS size,
                                  count(DISTINCT kept_id) AS clusters, count(*) FILTER (WHERE NOT kept) AS removed
                           FROM dedup_clusters WHERE kind <> 'exact_id' GROUP BY ALL ORDER BY 1, 2""",
                        []) if "dedup_clusters" in views else []
        found = examples(layout, phase_id, [lang for lang, *_ in languages[:5]], decode) if decode else []
        output_card = output_card_text(con, layout)
    setting, sources = json.loads(setting), json.loads(sources)
    names = [source for source, _ in by_source]
    front = {**license_metadata(sources, names), "pretty_name": f"mmcorpus {phase_id}",
             "language": language_codes([lang for lang, *_ in languages]),
             "size_categories": [size_category(int(shards or 0))],
             "task_categories": ["fill-mask"], "tags": ["mmbert", "multilingual", "pretokenized", "gemma2"],
             "configs": [{"config_name": "default", "data_files": [
                 {"split": "train", "path": posixpath.relpath(Layout.shards_glob(phase_id), phase_id)}]}],
             "dataset_info": {"config_name": "default", **info}}
    parts = [
        front_matter(front),
        f"# mmcorpus {phase_id}: {setting['name']}",
        f"{int(shards or 0):,} chunks, {int(tokens or 0):,} Gemma 2 tokens from {len(by_source)} sources: the "
        f"{setting['name']} mixture of mmBERT's recipe (temperature τ = {setting['temperature']}, at most "
        f"{setting['max_epochs']:g} epochs of a language, sequence length {setting['seq_len']:,}, mask rate "
        f"{setting['mask_rate']:g}); {coverage.count()} have data (Languages, below). Built {started} by mmcorpus "
        f"(commit {commit or 'unknown'}, seed {seed}); the manifest tables beside the shards and the data card "
        "`report/index.html` (`mmcorpus report`) hold every figure here and more.",
        "## Loading\n\n```python\nfrom datasets import load_dataset\n\n"
        "chunks = load_dataset(\"path/to/this/folder\", split=\"train\")  # the shards: shards/*.parquet\n```\n\n"
        "`mmcorpus query` answers SQL over the manifest; `mmcorpus export-mds` writes MosaicML MDS.",
        "## Shard schema\n\n" + markdown_table(["column", "type", "meaning"], [
            (name, f"`{SHARD.field(name).type}`", COLUMNS.get(name, "")) for name in SHARD.names]),
        "## Sources and terms\n\n" + markdown_table(TERMS_COLUMNS, terms_rows(sources, by_source))
        + f"\n\nUsers must follow each source's terms; {TOKENIZER_TERMS}.",
        f"## Languages\n\nOf the phase's languages in the recipe, {coverage.sentence()}.\n\n" + markdown_table(
            ["lang", "name", "tokens", "share", "epochs", "capped", "removed in curation"],
            [(lang, language_name(lang), count, share, epochs, capped, removal.get(lang))
             for lang, count, share, epochs, capped in languages]),
        "## What curation removed\n\nThe most frequent reasons curation removed documents for, before the pool "
        "every phase draws from (documents; `mmcorpus query rejects_by_reason` for all, `rejects` for each "
        "document):\n\n" + markdown_table(["stage", "reason", "documents"], removed),
        "Quality score of this phase's documents (0 at a filter's threshold, 1 at its clean end), by source:\n\n"
        + markdown_table(["source", "documents", "10%", "median", "90%"], quality),
    ]
    if clusters:
        parts.append("Duplicate clusters by size, over the whole pool every phase draws from (kept: one per cluster, "
                     "the highest quality):\n\n"
                     + markdown_table(["pass", "cluster size", "clusters", "pool documents removed"], clusters))
    if found:
        parts.append(f"## Examples\n\n{EXAMPLES}\n\n" + markdown_table(
            ["language", "doc_id", "text"], [(name, f"`{doc_id}`", text) for name, doc_id, text in found]))
    parts += [f"## Intended use\n\n{INTENDED_USE}", f"## Limitations\n\n{LIMITATIONS}",
              "## Citation\n\n```bibtex\n" + citations(sources, names) + "\n```"]
    layout.write_text(Layout.card(phase_id), "\n\n".join(parts) + "\n")
    layout.write_text(Layout.OUTPUT_CARD, output_card)
    return layout.url_of(Layout.card(phase_id))


# A phase's documents (those in its shards, through `lineage`) by source: count and quality quantiles
PHASE_QUALITY = """
    SELECT source, count(*) AS documents, round(quantile_cont(quality, 0.1), 3) AS p10,
           round(quantile_cont(quality, 0.5), 3) AS median, round(quantile_cont(quality, 0.9), 3) AS p90
    FROM pool WHERE id IN (SELECT doc_id FROM lineage WHERE phase = ?) GROUP BY 1 ORDER BY 1"""


def language_codes(labels: list[str]) -> list[str]:
    """The card's `language`: the ISO 639-3 codes of the labels (code is no language the Hub knows)."""
    return sorted({label.split("_")[0] for label in labels if not label.startswith("code_")})


def output_card_text(con: "duckdb.DuckDBPyConnection", layout: Layout) -> str:
    """`<out>/README.md`, from the catalog's views: a `datasets` config per built phase (its shards) with its
    `dataset_info`, so that `load_dataset("<out>", "phase1")` reads phase 1's shards and nothing else of the
    output."""
    built = con.execute("""SELECT phase, json_extract_string(config, '$.phase.name'),
                                  json_extract(config, '$.recipe.sources.sources') FROM run ORDER BY phase""")
    phases = [(phase_id, name, json.loads(sources)) for phase_id, name, sources in built.fetchall()]
    infos = {phase_id: dataset_info(con, layout, phase_id) for phase_id, *_ in phases}
    counts = {phase_id: phase_coverage(con, phase_id).count() for phase_id, *_ in phases}
    labels = [lang for (lang,) in con.execute("SELECT DISTINCT lang FROM mixture WHERE tokens > 0").fetchall()]
    used = [source for (source,) in con.execute("SELECT DISTINCT source FROM mixture ORDER BY 1").fetchall()]
    sources = {name: entry for _, _, recorded in phases for name, entry in recorded.items()}
    front = {**license_metadata(sources, used), "pretty_name": "mmcorpus", "language": language_codes(labels),
             "task_categories": ["fill-mask"], "tags": ["mmbert", "multilingual", "pretokenized", "gemma2"],
             "configs": [{"config_name": phase_id, "data_files": [
                 {"split": "train", "path": Layout.shards_glob(phase_id)}]} for phase_id, *_ in phases],
             "dataset_info": [{"config_name": phase_id, **infos[phase_id]} for phase_id, *_ in phases]}
    table = markdown_table(["config", "phase", "chunks", "languages with data", "card"], [
        (phase_id, name, infos[phase_id]["splits"][0]["num_examples"], counts[phase_id], f"`{Layout.card(phase_id)}`")
        for phase_id, name, _ in phases])
    first = phases[0][0] if phases else "phase1"
    text = "\n\n".join([
        front_matter(front), "# mmcorpus",
        "Pre-tokenized (Gemma 2) training chunks of mmBERT's annealed phases, one `datasets` config per phase "
        "built here; each phase's own card says where its text came from, under which terms, and what curation "
        "removed.",
        table,
        f"```python\nfrom datasets import load_dataset\n\nchunks = load_dataset(\"path/to/this/folder\", "
        f"\"{first}\", split=\"train\")\n```",
    ])
    return text + "\n"
