"""What a finished build says: where its shards, manifest and catalog are, its documents and tokens per source,
its top languages and the recipe's languages that have no data."""

from manifests.catalog import connect
from manifests.languages import TERMINAL_LIMIT, phase_coverage
from manifests.layout import Layout


def build_summary(layout: Layout, phase_id: str, seconds: float, seed: int, out: str) -> str:
    """The summary of a built phase; `out` as the user gave it, for the `mmcorpus query` line."""
    with layout.duckdb(threads=2) as con:
        shards = layout.glob(Layout.shards_glob(phase_id))
        per_source = con.execute(
            """SELECT source, count(DISTINCT doc_id) AS docs, sum(len(input_ids)) AS tokens FROM read_parquet(?)
               GROUP BY 1 ORDER BY tokens DESC""", [[layout.url_of(s) for s in shards]]).fetchall()
        languages = con.execute(
            "SELECT lang, sum(tokens) FROM read_parquet(?) GROUP BY 1 ORDER BY 2 DESC LIMIT 8",
            [layout.url_of(Layout.manifest(phase_id, "mixture"))]).fetchall()
        total = con.execute("SELECT count(*), sum(tokens), sum(bytes) FROM read_parquet(?)",
                            [layout.url_of(Layout.manifest(phase_id, "shards"))]).fetchone()
    with connect(layout) as con:
        coverage = phase_coverage(con, phase_id)
    lines = [
        f"\n{phase_id}: {total[0]} shards, {total[1]:,} tokens, {total[2] / 1e6:.1f} MB in {seconds:.1f} s "
        f"(seed {seed})",
        f"  shards   {layout.url_of(Layout.shards_dir(phase_id))}/",
        f"  manifest {layout.url_of(Layout.manifest_dir(phase_id))}/",
        f"  catalog  {layout.url_of(Layout.CATALOG)}   (mmcorpus query --out {out} \"SELECT * FROM mixture\")",
        f"\n  {'source':<10} {'documents':>10} {'tokens':>12}",
        *(f"  {source:<10} {docs:>10,} {tokens:>12,}" for source, docs, tokens in per_source),
        "\n  top languages: " + ", ".join(f"{lang} {tokens:,}" for lang, tokens in languages),
        f"  languages: {coverage.sentence(TERMINAL_LIMIT)}",
    ]
    return "\n".join(lines)
