"""Faults that must never leave a wrong output behind: files the manifest and the catalog read (rejects,
dedup clusters, the pool) damaged or deleted between builds, shards left over by a killed run, a second build on
the same --out."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from manifests.catalog import check
from manifests.layout import Layout, TreeLocked
from pipeline.build import build
from pipeline.cli import main
from pipeline.markers import recorded
from pipeline.runner import TaskFailed
from stages.paths import PROJECT_ROOT as ROOT
from stages.paths import SAMPLES_DIR as SAMPLES
from tests.helpers import GERMAN, copies_of_german, settings_for, shard_hashes

pytestmark = pytest.mark.slow  # builds the samples, kills builds in other processes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """FineWeb2 in three languages (German twice) and Dolma, with small shards (several per phase)."""
    root = tmp_path_factory.mktemp("faults") / "in"
    for lang in ("deu_Latn", "fra_Latn", "vie_Latn"):
        shutil.copytree(SAMPLES / "fineweb2" / "data" / lang, root / "fineweb2" / "data" / lang)
    shutil.copytree(SAMPLES / "dolma", root / "dolma")
    copies_of_german(root / GERMAN / "000_00001.parquet")  # so that dedup has clusters
    (root / "sources.yaml").write_text(
        "sources:\n  fineweb2: {path: fineweb2}\n"
        "  dolma: {path: dolma, subsets: {cc_en_head: eng_Latn, redpajama-arxiv: eng_Latn}}\nshard_tokens: 8192\n")
    return root / "sources.yaml"


@pytest.fixture(scope="module")
def reference(inputs, ray_session, tokenizers, tmp_path_factory):
    """One clean build: (out, its shard sha256s, its manifest tables)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    build(settings_for(out, sources=inputs))
    return out, shard_hashes(out), manifest_tables(out)


def manifest_tables(out):
    return {table: pq.read_table(out / "phase1" / "manifest" / f"{table}.parquet").drop_columns(
        [c for c in ("seconds",) if c in pq.read_schema(out / "phase1" / "manifest" / f"{table}.parquet").names]
    ).to_pylist() for table in ("stages", "reject_reasons", "mixture")}


def copy_of(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    return out


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("pattern", ["rejects/curate/*/*.parquet", "rejects/pool/*/*.parquet",
                                     "dedup/*/clusters/*.parquet", "pool/fineweb2/deu_Latn/*.parquet"])
def test_a_damaged_file_only_the_manifest_or_catalog_reads_is_written_again(reference, inputs, tmp_path, pattern):
    out = copy_of(reference, tmp_path)
    damaged = sorted(out.glob(pattern))[0]
    flip(damaged)
    info = build(settings_for(out, sources=inputs))
    assert sum(info["ran"].values()) >= 1  # its producer ran again
    assert Layout(out).verify(str(damaged.relative_to(out)), checksum_of(out, damaged)) is None
    assert check(Layout(out), "phase1") == []
    assert shard_hashes(out) == reference[1] and manifest_tables(out) == reference[2]
    assert main(["query", "--out", str(out), "SELECT count(*) FROM dedup_clusters JOIN rejects USING (id)"]) == 0


def checksum_of(out, path):
    files = pq.read_table(out / "phase1" / "manifest" / "files.parquet").to_pylist()
    row = next(f for f in files if f["path"] == str(path.relative_to(out)))
    return f"{row['algorithm']}:{row['checksum']}"


def test_a_plain_rerun_in_another_process_runs_nothing(reference, inputs, tmp_path):
    """Fingerprints hold the code, and nothing a process fills at run time (its DuckDB connections)."""
    out = copy_of(reference, tmp_path)
    command = ["build", "--phase", "1", "--out", str(out), "--sources", str(inputs)]
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rerun = sorted(out.glob(Layout.run_records_glob("phase1")))[-1]  # the run history's last row
    assert json.loads(pq.read_table(rerun).column("ran")[0].as_py()) == {}, done.stderr[-3000:]


def test_a_deleted_pool_file_is_written_again(reference, inputs, tmp_path):
    out = copy_of(reference, tmp_path)
    deleted = sorted((out / "pool" / "fineweb2" / "deu_Latn").glob("*.parquet"))[0]
    deleted.unlink()
    info = build(settings_for(out, sources=inputs))
    assert info["ran"]["pool"] == 1 and deleted.exists()
    assert shard_hashes(out) == reference[1] and check(Layout(out), "phase1") == []


def test_orphan_and_stray_shards_are_removed(reference, inputs, tmp_path):
    out = copy_of(reference, tmp_path)
    shards = out / "phase1" / "shards"
    before = len(list(shards.glob("shard-*.parquet")))
    # kill -9 during the shard stage: a task's marker is deleted before it runs again, its shard stays
    shutil.rmtree(out / Layout.MARKERS / "phase1-shard")
    (shards / "notes.txt").write_text("a stray file")
    fewer = ("sources.shard_tokens=65536",)
    build(settings_for(out, sources=inputs, overrides=fewer))
    listed = set(shard_hashes(out))
    assert len(listed) < before and {f"phase1/shards/{p.name}" for p in shards.iterdir()} == listed
    assert check(Layout(out), "phase1") == []
    fresh = tmp_path / "fresh"
    build(settings_for(fresh, sources=inputs, overrides=fewer))
    assert shard_hashes(out) == shard_hashes(fresh)
    datasets = pytest.importorskip("datasets")
    rows = datasets.load_dataset(str(out / "phase1"), split="train", cache_dir=str(tmp_path / "cache")).num_rows
    assert rows == sum(r["rows"] for r in pq.read_table(out / "phase1" / "manifest" / "shards.parquet").to_pylist())


def test_another_phases_damaged_manifest_fails_the_build_naming_it(reference, inputs, tmp_path):
    out = copy_of(reference, tmp_path)
    build(settings_for(out, 2, sources=inputs))
    flip(out / "phase2" / "manifest" / "stages.parquet")
    with pytest.raises(TaskFailed, match=r"phase2/manifest/stages\.parquet: checksum .* stage phase2-manifest"):
        build(settings_for(out, sources=inputs))
    build(settings_for(out, 2, sources=inputs))  # which writes it anew
    build(settings_for(out, sources=inputs))
    assert check(Layout(out), "phase2") == [] and check(Layout(out), "phase1") == []


def test_a_second_build_on_the_same_out_exits_2_naming_the_holder(tmp_path, capfd):
    out = tmp_path / "out"
    with Layout(out).locked("mmcorpus build --phase 1"):
        assert main(["build", "--phase", "1", "--out", str(out)]) == 2
        with pytest.raises(TreeLocked), Layout(out).locked("another"):
            pass
    err = [line for line in capfd.readouterr().err.strip().splitlines() if line.startswith("mmcorpus:")]
    assert len(err) == 1 and f"being built by process {os.getpid()}" in err[0] and "mmcorpus build --phase 1" in err[0]
    assert not (out / Layout.LOCK).exists()  # released
    assert not (out / "curated").exists()  # no work was done


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    (out / Layout.LOCK).write_text(json.dumps(dict(host=os.uname().nodename, pid=int(gone.stdout), heartbeat=0)))
    with Layout(out).locked("mmcorpus build"):
        holder = json.loads((out / Layout.LOCK).read_text())
    assert holder["pid"] == os.getpid()


def test_a_missing_bucket_fails_before_any_work(s3, tmp_path):
    """On moto's S3 server: the lock, the first object a build writes, fails it in one line, before Ray starts."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out",
                           "s3://no-such-bucket/out"], cwd=ROOT, env=dict(s3, TMPDIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mmcorpus: build failed:") and "no-such-bucket" in last, last
    assert "curate" not in done.stderr
    assert not list(tmp_path.glob("mmcorpus-*"))  # no spool folder left


def test_a_dying_ray_agent_ends_the_build_with_one_line(sample_build, tmp_path):
    """Ray ends a driver whose raylet died (it fate-shares with its agent) from C++, with a Ray line last; the
    watching process has the last word, and the same command then resumes."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", "build", "--phase", "1", "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while len(recorded(Layout(out), "curate")) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before the kill"
        time.sleep(0.05)
    agents = [pid for pid, command in descendants(process.pid) if "DashboardAgent" in command]
    assert agents
    os.kill(agents[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("mmcorpus: build failed:") and "run the same command again" in last, stderr[-2000:]
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert shard_hashes(out) == shard_hashes(sample_build[0])


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`, from /proc."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                commands[int(entry)] = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return [(pid, commands[pid]) for pid in found]
