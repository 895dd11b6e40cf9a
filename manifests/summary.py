"""What a finished build says: where its shards, manifest and catalog are, its documents and tokens per source,
its top languages and the recipe's languages that have no data."""

from manifests.catalog import loaded
from manifests.languages import TERMINAL_LIMIT, phase_coverage
from manifests.layout import Layout
from manifests.schemas import SHARD


def build_summary(layout: Layout, phase_id: str, seconds: float, seed: int, out: str) -> str:
    """The summary of a built phase; `out` as the user gave it, for the `mmcorpus query` line."""
    with loaded(layout) as con:
        con.register("chunks", layout.dataset(layout.glob(Layout.shards_glob(phase_id)), SHARD))
        per_source = con.execute(
            """SELECT source, count(DISTINCT doc_id) AS docs, sum(len(input_ids)) AS tokens FROM chunks
               GROUP BY 1 ORDER BY tokens DESC""").fetchall()
        languages = con.execute("SELECT lang, sum(tokens) FROM mixture WHERE phase = ? GROUP BY 1 ORDER BY 2 DESC "
                                "LIMIT 8", [phase_id]).fetchall()
        total = con.execute("SELECT count(*), sum(tokens), sum(bytes) FROM shards WHERE phase = ?",
                            [phase_id]).fetchone()
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
