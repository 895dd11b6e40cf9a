"""`mmcorpus report --phase N`: a data card per phase, from the manifest through DuckDB, nothing recomputed.

Writes <out>/<phase>/report/: index.html (self-contained: inline CSS, figures as inline PNG, no JavaScript),
the figures as PNG files and every table as CSV; and the Hugging Face cards again (manifests/card.py). The page
opens on the figures; the recipe comes last, its YAML folded. Paths of the building machine show relative to the
recipe's folder (or the output), never absolute.
"""

import base64
import csv
import html
import io
import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402

from manifests.card import (  # noqa: E402
    EXAMPLES,
    INTENDED_USE,
    LIMITATIONS,
    PHASE_QUALITY,
    REMOVED_IN_CURATION,
    TERMS_COLUMNS,
    TOKENIZER_TERMS,
    citations,
    display,
    examples,
    language_name,
    terms_rows,
    write_dataset_card,
)
from manifests.catalog import connect  # noqa: E402
from manifests.languages import phase_coverage  # noqa: E402
from manifests.layout import Layout  # noqa: E402

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin: .8em 0; } summary { cursor: pointer; color: #2e5d8a; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 12px; }
"""


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[tuple]

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def html(self) -> str:
        """Text left, numbers right: a column is numeric when every value it holds is a number."""
        numeric = [all(_number(row[i]) for row in self.rows if row[i] is not None) and
                   any(row[i] is not None for row in self.rows) for i in range(len(self.columns))]

        def cell(tag: str, value: str, number: bool) -> str:
            return f'<{tag} class="num">{value}</{tag}>' if number else f"<{tag}>{value}</{tag}>"

        head = "".join(cell("th", html.escape(c), n) for c, n in zip(self.columns, numeric, strict=True))
        body = "".join("<tr>" + "".join(cell("td", html.escape(display(v)), n)
                                        for v, n in zip(row, numeric, strict=True)) + "</tr>" for row in self.rows)
        return f'<table id="table-{self.name}"><tr>{head}</tr>{body}</table>'


@dataclass
class Section:
    id: str
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    code: str = ""  # shown as it is (the citation)
    folded: str = ""  # shown as it is, folded under the title (the recipe's YAML)


class Report:
    def __init__(self, layout: Layout, phase_id: str, decode: Callable[[list[int]], str] | None = None) -> None:
        self.layout, self.phase_id, self.decode = layout, phase_id, decode
        self.con = connect(layout)
        self.con.create_function("language_name", language_name, ["VARCHAR"], "VARCHAR")
        self.sections: list[Section] = []
        self.images: dict[str, bytes] = {}

    def query(self, name: str, sql: str, params: list | None = None) -> Table:
        result = self.con.execute(sql, params if params is not None else [self.phase_id])
        return Table(name, [d[0] for d in result.description], result.fetchall())

    def figure(self, name: str, draw: Callable[[plt.Axes], None], size: tuple[float, float] = (10, 4)) -> str:
        fig, ax = plt.subplots(figsize=size, dpi=110)
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        self.images[f"{name}.png"] = buffer.getvalue()
        return f"{name}.png"

    def build(self) -> str:
        run = self.query("run", "SELECT * FROM run WHERE phase = ?")
        if not run.rows:
            raise FileNotFoundError(f"{self.layout.url}: phase {self.phase_id} has no manifest: build it first")
        config = json.loads(dict(zip(run.columns, run.rows[0], strict=True))["config"])
        self.show = local_paths(self.layout.url, config["recipe"].get("files") or {})
        self.coverage = phase_coverage(self.con, self.phase_id)
        self.languages()
        self.annealing(config["recipe"]["phases"])
        self.sources()
        self.curation()
        self.lengths()
        self.quality()
        self.mlm_eval()
        self.recipe(config, dict(zip(run.columns, run.rows[0], strict=True)))
        self.shards()
        self.terms(config["recipe"]["sources"]["sources"])
        return self.write(config)

    def terms(self, recipe_sources: dict[str, dict]) -> None:
        """Where the text came from and under which terms (the recipe's, per source); use, limitations, citation;
        decoded examples."""
        sources = self.query("terms", "SELECT source, sum(tokens) AS tokens FROM mixture WHERE phase = ? "
                                      "GROUP BY 1 ORDER BY 2 DESC")
        table = Table("terms", TERMS_COLUMNS, terms_rows(recipe_sources, sources.rows))
        self.sections.append(Section("terms", "Sources and terms", f"Users must follow each source's terms; "
                                     f"{TOKENIZER_TERMS}.", [table]))
        if self.decode is not None:
            languages = [r[0] for r in self.con.execute(
                "SELECT lang FROM mixture WHERE phase = ? GROUP BY 1 ORDER BY sum(tokens) DESC LIMIT 5",
                [self.phase_id]).fetchall()]
            rows = examples(self.layout, self.phase_id, languages, self.decode)
            self.sections.append(Section("examples", "Examples", EXAMPLES,
                                         [Table("examples", ["language", "doc_id", "text"], rows)]))
        self.sections.append(Section("use", "Intended use and limitations", f"{INTENDED_USE} {LIMITATIONS}"))
        self.sections.append(Section("citation", "Citation", code=citations(
            recipe_sources, [source for source, _ in sources.rows])))

    def recipe(self, config: dict, run: dict) -> None:
        phase = config["phase"]
        rows = [
            ("phase", f"{phase['id']} ({phase['name']})"), ("budget tokens", f"{config['budget_tokens']:,.0f}"),
            ("full-scale budget", f"{phase['budget_tokens']:,.0f}"), ("temperature τ", phase["temperature"]),
            ("languages", f"{self.coverage.count()} have data (the languages of mmBERT's counts column "
                          f"{phase['languages']['column']})"),
            ("epoch cap", phase["max_epochs"]), ("sequence length", phase["seq_len"]),
            ("minimum chunk", phase["min_chunk_tokens"]), ("mask rate", phase["mask_rate"]),
            ("RoPE θ global / local", f"{phase['global_rope_theta']:g} / {phase['local_rope_theta']:g}"),
            ("quality quantile", phase["quality_quantile"]),
            ("re-hydration", "by minhash_cluster_size band: " + ", ".join(
                f"≤{band['max_cluster_size'] or '∞'}→{band['repeats']}" for band in phase["rehydrate_bands"])
             if phase.get("rehydrate") else "off"),
            ("FineWeb2 share", phase["fineweb2_share"]), ("other sources", json.dumps(phase["other_sources"])),
            ("tokenizer", self.show(run["tokenizer"])), ("tokenizer sha256", run["tokenizer_sha256"]),
            ("language identification", lid_used(config, versions := json.loads(run["versions"]), self.show)),
            ("seed", run["seed"]), ("shards", config["n_shards"]),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v != "not installed")),
        ] + [(f"source {name}", self.show(source["path"]))
             for name, source in config["recipe"]["sources"]["sources"].items()]
        ran = config.get("ran") or {}
        timings = Table("timings", ["stage", "seconds", "tasks run"],
                        [(stage, round(seconds, 2), _tasks_run(ran, stage) or "none: reused from an earlier build")
                         for stage, seconds in config["timings"].items()]
                        + [("total", round(run["seconds"], 2), sum(ran.values()))])
        self.sections.append(Section("recipe", "Recipe", tables=[Table("recipe", ["setting", "value"], rows),
                                                                  timings]))
        recipe = _walk(config["recipe"], self.show)
        self.sections.append(Section("full-recipe", "The whole recipe", "Every setting the build used (sources, "
                                     "tokenizers, LID, quality, dedup, phases), as `mmcorpus config show` prints it; "
                                     "paths relative to the recipe's folder.",
                                     folded=yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)))

    def languages(self) -> None:
        table = self.query("languages", f"""
            SELECT lang, language_name(lang) AS name, sum(available_tokens) AS available, sum(target_tokens) AS target,
                   sum(tokens) AS written,
                   sum(tokens)::DOUBLE / nullif(sum(available_tokens), 0) AS epochs, bool_or(capped) AS capped,
                   any_value(r.removed) AS removed_in_curation
            FROM mixture m LEFT JOIN ({REMOVED_IN_CURATION}) r USING (lang)
            WHERE m.phase = ? GROUP BY lang ORDER BY written DESC""", [self.phase_id, self.phase_id])
        rows = table.rows

        def draw(ax: plt.Axes) -> None:
            x = range(len(rows))
            ax.bar(x, [r[4] for r in rows], color=["#c0392b" if r[6] else "#2e86c1" for r in rows], label="written")
            ax.scatter(x, [r[3] for r in rows], color="black", marker="_", s=120, zorder=3, label="target")
            for i, r in enumerate(rows):
                ax.text(i, max(r[4], 1) * 1.15, f"{r[5]:.1f}x", ha="center", fontsize=6, rotation=90)
            ax.set_yscale("log")
            ax.set_xticks(list(x), [r[0] for r in rows], rotation=90, fontsize=7)
            ax.set_ylabel("tokens (log)")
            ax.legend(title="red: capped at the epoch limit", fontsize=8, title_fontsize=8)

        name = self.figure("tokens_per_language", draw, (max(8, len(rows) * 0.3), 4.5))
        self.sections.append(Section("languages", "Tokens per language",
                                     f"Of the phase's languages in the recipe, {self.coverage.sentence()}. "
                                     "Written (bars) against target (marks), sorted, log scale; each bar says how "
                                     "many epochs of the language's available tokens it holds. The table adds the "
                                     "share of the language's documents curation removed.",
                                     [table], [(name, "tokens per language, target vs written")]))

    def annealing(self, phases: dict[str, dict]) -> None:
        table = self.query("annealing", """
            SELECT lang, sum(available_tokens) AS available FROM mixture WHERE phase = ?
            GROUP BY lang HAVING available > 0 ORDER BY available DESC""")
        langs, counts = [r[0] for r in table.rows], [r[1] for r in table.rows]
        temperatures = {f"phase {n}": float(entry["temperature"]) for n, entry in sorted(phases.items())}
        shares = {label: [n ** tau / sum(c ** tau for c in counts) for n in counts]
                  for label, tau in temperatures.items()}
        curves = Table("annealing", ["lang", "available", *[f"p at τ={t}" for t in temperatures.values()]],
                       [(lang, n, *(shares[label][i] for label in temperatures)) for i, (lang, n)
                        in enumerate(zip(langs, counts, strict=True))])

        def draw(ax: plt.Axes) -> None:
            for label, tau in temperatures.items():
                ax.plot(range(len(langs)), shares[label], marker="o", markersize=3, label=f"{label}: τ={tau}")
            ax.set_yscale("log")
            ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=7)
            ax.set_ylabel("share p ∝ n^τ (log)")
            ax.legend(fontsize=8)

        name = self.figure("annealing", draw, (max(8, len(langs) * 0.3), 4))
        self.sections.append(Section("annealing", "Annealing: the three temperatures over these languages",
                                     "The share each language would get under each phase's temperature, from this "
                                     "phase's available tokens: lower τ flattens toward uniform.",
                                     [curves], [(name, "language shares at each phase's τ")]))

    def sources(self) -> None:
        table = self.query("sources", """
            SELECT source, count(*) AS languages, sum(available_tokens) AS available, sum(target_tokens) AS target,
                   sum(tokens) AS written FROM mixture WHERE phase = ? GROUP BY source ORDER BY written DESC""")

        def draw(ax: plt.Axes) -> None:
            ax.barh([r[0] for r in table.rows], [r[4] for r in table.rows], color="#27ae60")
            ax.set_xscale("log")  # sources span decades: MegaWika and ProLong next to FineWeb2
            ax.set_xlabel("tokens written (log)")

        name = self.figure("tokens_per_source", draw, (8, 3))
        self.sections.append(Section("sources", "Tokens per source", tables=[table],
                                     figures=[(name, "tokens written per source")]))

    def curation(self) -> None:
        stages = self.query("stages", """
            SELECT stage, source, sum(read) AS read, sum(kept) AS kept, sum(rejected) AS rejected,
                   sum(tokens) AS tokens, round(sum(seconds), 3) AS seconds FROM stages WHERE phase = ?
            GROUP BY stage, source ORDER BY CASE stage WHEN 'read' THEN 0 WHEN 'lid' THEN 1 WHEN 'quality' THEN 2
                WHEN 'dedup' THEN 3 WHEN 'tokenize' THEN 4 ELSE 5 END, source""")
        reasons = self.query("reject_reasons", """
            SELECT stage, reason, sum(docs) AS documents FROM reject_reasons WHERE phase = ?
            GROUP BY ALL ORDER BY documents DESC""")
        filtered = [r for r in reasons.rows if r[0] != "mix"]  # mixing's are sampling, not filtering
        notes = self.query("notes", "SELECT stage, note, sum(docs) AS documents FROM notes WHERE phase = ? "
                                    "GROUP BY ALL ORDER BY documents DESC")
        totals: dict[str, list[int]] = {}
        for stage, _, _, kept, rejected, _, _ in stages.rows:
            totals.setdefault(stage, [0, 0])
            totals[stage][0] += kept
            totals[stage][1] += rejected

        def draw_stages(ax: plt.Axes) -> None:
            names = list(totals)
            ax.bar(names, [totals[s][0] for s in names], color="#2e86c1", label="kept")
            ax.bar(names, [totals[s][1] for s in names], bottom=[totals[s][0] for s in names], color="#c0392b",
                   label="rejected")
            ax.set_ylabel("documents")
            ax.legend(fontsize=8)

        def draw_reasons(ax: plt.Axes) -> None:
            top = filtered[:20][::-1]
            ax.barh([f"{r[1]}" for r in top], [r[2] for r in top], color="#c0392b")
            ax.set_xscale("log")
            ax.set_xlabel("documents rejected by curation (log)")
            ax.tick_params(axis="y", labelsize=7)

        first = self.figure("kept_vs_rejected", draw_stages, (8, 3.5))
        second = self.figure("reject_reasons", draw_reasons, (9, max(3, len(filtered[:20]) * 0.3)))
        self.sections.append(Section("curation", "Kept and rejected, per stage and reason",
                                     "Documents and tokens per stage and source (read = kept + rejected), the "
                                     "reasons documents were dropped, and the notes on documents that were kept. "
                                     "The figure shows curation's reasons only: mixing's (mix:not_sampled) are the "
                                     "sampling that fits the budget, not filtering, and stay in the table.",
                                     [stages, reasons, notes],
                                     [(first, "documents kept vs rejected per stage"),
                                      (second, "documents rejected by curation, by reason (top 20, log scale)")]))

    def lengths(self) -> None:
        docs = [r[0] for r in self.con.execute("SELECT n_tokens FROM pool WHERE id IN (SELECT doc_id FROM lineage "
                                               "WHERE phase = ?)", [self.phase_id]).fetchall()]
        chunks = [r[0] for r in self.con.execute(
            "SELECT len(input_ids) FROM read_parquet(?)", [self.layout.url_of(Layout.shards_glob(self.phase_id))])
            .fetchall()]
        summary = Table("lengths", ["what", "count", "min", "median", "mean", "max"], [
            (label, len(values), min(values), sorted(values)[len(values) // 2], round(sum(values) / len(values), 1),
             max(values))
            for label, values in (("phase documents (tokens)", docs), ("phase chunks (tokens)", chunks)) if values
        ])

        def draw(ax: plt.Axes) -> None:
            values = [v for v in docs + chunks if v > 0] or [1]
            bins = np.logspace(np.log10(min(values)), np.log10(max(values) + 1), 40)  # documents span 10^1..10^5
            ax.hist(docs, bins=bins, alpha=0.6, label="phase documents", color="#8e44ad")
            ax.hist(chunks, bins=bins, alpha=0.6, label="phase chunks", color="#f39c12")
            ax.set_xscale("log")
            ax.set_xlabel("tokens (log)")
            ax.set_ylabel("count")
            ax.legend(fontsize=8)

        name = self.figure("lengths", draw, (8, 3.5))
        self.sections.append(Section("lengths", "Length distributions", tables=[summary],
                                     figures=[(name, "document and chunk lengths in tokens")]))

    def quality(self) -> None:
        """The phase's documents' quality scores by source, and the pool's duplicate clusters by size."""
        quantiles = self.query("quality", PHASE_QUALITY)
        scores = self.con.execute("SELECT source, list(quality) FROM pool WHERE id IN (SELECT doc_id FROM lineage "
                                  "WHERE phase = ?) GROUP BY 1 ORDER BY 1", [self.phase_id]).fetchall()

        def draw(ax: plt.Axes) -> None:
            for source, values in scores:
                ax.hist([v for v in values if v is not None], bins=np.linspace(0, 1, 41), alpha=0.5, label=source)
            ax.set_xlabel("quality score (0: at a filter's threshold, 1: at its clean end)")
            ax.set_ylabel("documents")
            ax.legend(fontsize=8)

        name = self.figure("quality", draw, (8, 3.5))
        tables = [quantiles]
        views = {view for (view,) in self.con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        if "dedup_clusters" in views:
            tables.append(self.query("cluster_sizes", """
                SELECT kind, cluster_size, count(DISTINCT kept_id) AS clusters,
                       count(*) FILTER (WHERE NOT kept) AS removed
                FROM dedup_clusters WHERE kind <> 'exact_id' GROUP BY ALL ORDER BY kind, cluster_size""", []))
        self.sections.append(Section("quality", "Quality scores and duplicate clusters",
                                     "The quality score of this phase's documents per source, and the duplicate "
                                     "clusters dedup found in the whole pool every phase draws from, by size (one "
                                     "document kept per cluster; removed counts pool documents).",
                                     tables, [(name, "quality scores of the phase's documents")]))

    def shards(self) -> None:
        table = self.query("shards", "SELECT path, rows, tokens, bytes, sha256 FROM shards WHERE phase = ? "
                                     "ORDER BY path")
        self.sections.append(Section("shards", "Shards", tables=[table]))

    def mlm_eval(self) -> None:
        """Present once `mmcorpus eval-mlm` has run on the phase."""
        if not self.con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'mlm_eval'").fetchall()[0][0]:
            return
        table = self.query("mlm_eval", """
            SELECT lang, chunks, tokens, masked_tokens, round(loss, 4) AS loss, round(perplexity, 2) AS perplexity,
                   checkpoint FROM mlm_eval WHERE phase = ? ORDER BY loss DESC""")
        if table.rows:
            text = (f"MLM loss of {table.rows[0][-1]} on a sample of each language's chunks at the phase's mask "
                    "rate (`mmcorpus eval-mlm`), highest first: a language far above its neighbours holds text the "
                    "model did not learn (mislabelled language, boilerplate, broken encoding).")
            self.sections.append(Section("mlm", "MLM loss per language", text, tables=[table]))

    def write(self, config: dict) -> str:
        for name, data in self.images.items():
            self.layout.write_bytes(Layout.report(self.phase_id, name), data)
        parts = [f"<h1>Data card: {html.escape(config['phase']['id'])} — {html.escape(config['phase']['name'])}</h1>",
                 "<nav>" + " · ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in self.sections)
                 + "</nav>"]
        for section in self.sections:
            parts.append(f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>')
            if section.text:
                parts.append(f"<p>{html.escape(section.text)}</p>")
            if section.code:
                parts.append(f"<pre>{html.escape(section.code)}</pre>")
            if section.folded:
                parts.append(f"<details><summary>{html.escape(section.title)} (YAML)</summary>"
                             f"<pre>{html.escape(section.folded)}</pre></details>")
            for name, caption in section.figures:
                data = base64.b64encode(self.images[name]).decode()
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            for table in section.tables:
                self.layout.write_text(Layout.report(self.phase_id, f"{table.name}.csv"), table.csv())
                parts.append(table.html())
            parts.append("</section>")
        page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{self.phase_id} data card'
                f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
        self.layout.write_text(Layout.report(self.phase_id, "index.html"), page)
        self.con.close()
        return self.layout.url_of(Layout.report(self.phase_id, "index.html"))


def _tasks_run(ran: dict[str, int], timing: str) -> int:
    """Tasks the build ran for a timed part (curate, dedup, pool, mix: the stages it covers)."""
    prefix = {"mix": "phase", "dedup": "dedup-"}.get(timing, timing)
    return sum(count for stage, count in ran.items() if stage.startswith(prefix))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def local_paths(out: str, files: dict[str, str]) -> Callable[[str], str]:
    """How the card shows a path of the building machine: relative to the output, or to the recipe's folder
    (the folder of its YAML files) when they share more than the root; else by its name alone."""
    folders = [os.path.dirname(f) for f in files.values() if isinstance(f, str) and f.startswith("/")]
    recipe = os.path.commonpath(folders) if folders else None

    def show(value: str) -> str:
        if not isinstance(value, str) or not value.startswith("/"):
            return value
        if out.startswith("/") and os.path.commonpath([out, value]) == out:
            return os.path.relpath(value, out)  # inside the output
        for folder in (recipe, out):  # the recipe's folder first: outputs and checkouts often share /tmp or /home
            if folder and folder.startswith("/") and os.path.commonpath([folder, value]) != "/":
                return os.path.relpath(value, folder)
        return "…/" + posixpath.basename(value)

    return show


def _walk(value: object, show: Callable[[str], str]) -> object:
    if isinstance(value, dict):
        return {key: _walk(item, show) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, show) for item in value]
    return show(value) if isinstance(value, str) else value


def lid_used(config: dict, versions: dict[str, str], show: Callable[[str], str]) -> str:
    """The LID model and the fastText package the build recorded (not what this process imports)."""
    model = config["recipe"]["lid"]["model"]
    digest = (config.get("assets", {}).get("lid:model") or {}).get("sha256") or model.get("sha256")
    package = next((f"{name} {version}" for name, version in versions.items()
                    if name.startswith("fasttext") and version != "not installed"), "version not recorded")
    return f"fastText ({package}), model {show(model['path'])}" + (f", sha256 {digest}" if digest else "")


def build_report(layout: Layout, phase_id: str, decode: Callable[[list[int]], str] | None = None) -> str:
    """The data card, and the Hugging Face cards written again (the phase's and the output's)."""
    page = Report(layout, phase_id, decode).build()
    write_dataset_card(layout, phase_id, decode)
    return page
