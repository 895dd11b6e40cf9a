"""The run history: every build adds a row to its phase's `runs`, a rerun that reuses everything too; `run` stays
the build that wrote the current shards, and a build that replaces them with another seed says so."""

import json
import logging

import pytest

from manifests.catalog import connect
from manifests.layout import Layout
from pipeline.build import build
from tests.helpers import settings_for, shard_hashes

pytestmark = pytest.mark.slow  # builds


def rows(out, sql: str) -> list[dict]:
    result = connect(Layout(str(out))).execute(sql)
    columns = [column[0] for column in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def test_a_rerun_that_reuses_everything_is_recorded_and_run_keeps_the_build(sample_build_copy):
    out, first = sample_build_copy
    again = build(settings_for(out))
    shards = list(shard_hashes(out).values())
    assert again["ran"] == {} and again["reused"]["phase1-shard"] == len(shards)
    history = rows(out, "SELECT * FROM runs WHERE phase = 'phase1'")
    assert [row["started"] for row in history] == [first["started"], again["started"]]
    assert [json.loads(row["ran"]) for row in history] == [first["ran"], {}]
    assert json.loads(history[1]["reused"]) == again["reused"] and json.loads(history[1]["costs"]) == {}
    assert history[0]["shards"] == history[1]["shards"] == shards
    assert len(list((out / Layout.run_records_glob("phase1")).parent.iterdir())) == 2  # the first file kept
    (run,) = rows(out, "SELECT * FROM run WHERE phase = 'phase1'")
    assert run["started"] == first["started"] and run["seconds"] == first["seconds"]
    assert json.loads(run["config"])["stages"]["phase1-shard"]["tasks"] == len(shards)  # the build that ran: costs


def test_another_seed_logs_what_it_replaces_and_becomes_the_run(sample_build_copy, caplog):
    out, first = sample_build_copy
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        other = build(settings_for(out, seed=1))
    when = first["started"][:16] + "Z"
    assert f"phase1: replacing the shards built with seed 0 ({when}) by seed 1" in caplog.messages
    (run,) = rows(out, "SELECT seed, started FROM run WHERE phase = 'phase1'")
    assert run == {"seed": 1, "started": other["started"]}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.build"):
        build(settings_for(out, seed=1))  # the same seed again: nothing replaced, the seed-1 build stays `run`
    assert not [message for message in caplog.messages if "replacing" in message]
    assert rows(out, "SELECT seed, started FROM run WHERE phase = 'phase1'") == [run]
    seeds = rows(out, "SELECT seed, ran <> '{}' AS ran FROM runs WHERE phase = 'phase1' ORDER BY started")
    assert seeds == [{"seed": 0, "ran": True}, {"seed": 1, "ran": True}, {"seed": 1, "ran": False}]
