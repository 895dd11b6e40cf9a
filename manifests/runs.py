"""The run history of a phase: a record per build under <phase>/manifest/runs/ (what ran and what was reused, per
stage, with costs, requests to the store and the shards' sha256s), and which of those builds wrote the current
shards (the `run` row)."""

import datetime
import json

import pyarrow.parquet as pq

from manifests.layout import Layout
from manifests.schemas import RUN, RUNS
from manifests.writer import write_parquet


def _run_row(phase_id: str, run_info: dict) -> dict:
    return dict(phase=phase_id, seed=run_info["seed"], config=json.dumps(run_info, default=str, sort_keys=True),
                versions=json.dumps(run_info["versions"], sort_keys=True), tokenizer=run_info["tokenizer"],
                tokenizer_sha256=run_info["tokenizer_sha256"], started=run_info["started"],
                seconds=run_info["seconds"], git_commit=run_info.get("git_commit"))


def record_run(layout: Layout, phase_id: str, run_info: dict, shards: list[dict],
               store: dict[str, dict[str, int]]) -> None:
    """Add the build to the phase's run history: a file of its own, named by its start, with `store` (stage ->
    its requests to the store). The driver writes it outside the manifest's record, so that no later build's
    manifest or sweep removes it, and writes it again as its last request, with the whole build's counts."""
    row = _run_row(phase_id, run_info) | dict(
        ran=json.dumps(run_info["ran"], sort_keys=True), reused=json.dumps(run_info["reused"], sort_keys=True),
        costs=json.dumps(run_info["stages"], sort_keys=True), store=json.dumps(store, sort_keys=True),
        shards=[shard["sha256"] for shard in shards])
    started = datetime.datetime.fromisoformat(run_info["started"])
    write_parquet(layout, Layout.run_record(phase_id, started), [row], RUNS)


def built_by(layout: Layout, phase_id: str, shards: list[dict]) -> dict:
    """The `run` row: the latest build of the phase's history that ran one of the phase's stages and ended with
    these shards (a rebuild that reused them leaves it in place); else the run row already there (a tree built
    before run histories), else the latest build."""
    history = layout.read_tables(layout.glob(Layout.run_records_glob(phase_id))).sort_by("started").to_pylist()
    digests = [shard["sha256"] for shard in shards]
    wrote = [row for row in history if row["shards"] == digests
             and any(stage.rsplit("-", 1)[0] == phase_id for stage in json.loads(row["ran"]))]
    row = wrote[-1] if wrote else current_run(layout, phase_id) or history[-1]
    return {name: row[name] for name in RUN.names}


def current_run(layout: Layout, phase_id: str) -> dict | None:
    """The phase's `run` row: the build that wrote its shards (None before its first build)."""
    if not layout.exists(name := Layout.manifest(phase_id, "run")):
        return None
    with layout.open(name) as f:
        return pq.read_table(f).to_pylist()[0]


def replacement(phase_id: str, built: dict, seed: int, variant: str | None, budget: float) -> str | None:
    """The line a build logs when its seed, variant or budget differs from those of the build that wrote the
    phase's shards (its `run` row); None when none does."""
    config = json.loads(built["config"])
    before = dict(seed=built["seed"], variant=config["phase"].get("variant"), budget=config.get("budget_tokens"))
    after = dict(seed=seed, variant=variant, budget=budget)
    changed = [key for key in after if before[key] != after[key]]
    if not changed:
        return None

    def told(values: dict) -> str:
        return ", ".join(f"budget {values[key]:,.0f} tokens" if key == "budget" and values[key] is not None
                         else f"{key} {values[key]}" for key in changed)

    when = datetime.datetime.fromisoformat(built["started"]).strftime("%Y-%m-%dT%H:%MZ")
    return f"{phase_id}: replacing the shards built with {told(before)} ({when}) by {told(after)}"
