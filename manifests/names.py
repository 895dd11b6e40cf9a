"""The output tree's names: every path under `--out` spelled once, as a template that builds it and parses it back.

Names are relative to the root (manifests/layout.py turns them into paths and URLs; `Layout` inherits `Names`, so
`Layout.shard(...)` is the usual spelling). Words, one meaning each:
    part            a piece of one source's curated output; (source, part) names a curated file, and every file
                    made from it (rejects, signatures, removals, pool files) carries the same two
    hash partition  one of the P slices of dedup's shuffle (`p<NNNNN>`, the task that reads it): each relation
                    between dedup's SQL steps is a folder of one file per task of the step that wrote it, its
                    rows sorted by partition, a partition's rows in row groups of their own
    shard group     a set of consecutive shards whose chunks mixing places together (`g<NNNNN>`) when there are
                    too many shards to write a file per shard; a split task then divides it into the shards'
                    own folders (`s<NNNNN>`)

This module is a leaf: it imports nothing of the project.
"""

import datetime
import fnmatch
import posixpath
import re
import string
from collections.abc import Iterable

Fields = dict[str, str | int]


class Template:
    """One kind of name: `{field}` is one path segment or a piece of one, `{field:05d}` a number, and a field
    called `folder` any number of segments."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pieces = [(literal, field, spec) for literal, field, spec, _ in string.Formatter().parse(pattern)]
        self.numbers = {field for _, field, spec in self.pieces if field and spec.endswith("d")}
        self.regex = re.compile("".join(re.escape(literal) + (f"(?P<{field}>{self._field_regex(field)})" if field
                                                              else "") for literal, field, _ in self.pieces))

    def _field_regex(self, field: str) -> str:
        return r"\d+" if field in self.numbers else ".+" if field == "folder" else "[^/]+"

    def __repr__(self) -> str:
        return f"Template({self.pattern!r})"

    def format(self, **fields: object) -> str:
        return self.pattern.format(**fields)

    def parse(self, name: str) -> Fields | None:
        """The fields of a name of this kind; None for a name of another kind."""
        found = self.regex.fullmatch(name)
        if found is None:
            return None
        return {field: int(value) if field in self.numbers else value for field, value in found.groupdict().items()}

    def glob(self, **fields: object) -> str:
        """Every name of this kind, the fields given held fixed."""
        return "".join(literal + (format(fields[field], spec) if field in fields else "*" if field else "")
                       for literal, field, spec in self.pieces)

    def folder(self, **fields: object) -> str:
        """The deepest folder that holds every name of this kind, the fields given held fixed."""
        return posixpath.dirname(self.glob(**fields).split("*", 1)[0])

    def by(self, names: Iterable[str], field: str, **fixed: object) -> dict[str | int, list[str]]:
        """The names of this kind whose fields match `fixed`, by the value of `field`, in the order given."""
        found: dict[str | int, list[str]] = {}
        for name in names:
            fields = self.parse(name)
            if fields is not None and all(fields[key] == value for key, value in fixed.items()):
                found.setdefault(fields[field], []).append(name)
        return found


class Names:
    """Every name of the output tree, relative to its root."""

    CATALOG = "catalog.duckdb"
    LOCK = "_lock.json"
    MARKERS = "_done"

    CURATED = Template("curated/{source}/{part}.parquet")
    REJECTS = Template("rejects/{group}/{source}/{part}.parquet")
    PHASE_REJECTS = Template("{phase}/" + REJECTS.pattern)
    DEDUP = Template("dedup/{config}")  # the folder of one MinHash configuration
    SIGNATURES = Template(DEDUP.pattern + "/signatures/{source}/{part}.parquet")
    DEDUP_STEPS = Template(DEDUP.pattern + "/steps")
    RELATION = Template("{folder}/{step}/{relation}")  # a relation one of the steps under `folder` wrote
    PARTITION = Template("p{partition:05d}")  # the key of the task that reads a hash partition
    RELATION_FILE = Template("{folder}/{task}.parquet")  # a task's rows of a relation: a row group per partition
    CLUSTERS = Template(DEDUP.pattern + "/clusters")  # a relation: every document in a duplicate cluster
    REMOVALS = Template(DEDUP.pattern + "/removed/{source}/{part}.parquet")  # a curated file's rows dedup removes
    POOL = Template("pool/{source}/{lang}/{part}.parquet")
    PLACED_DIR = Template("{phase}/_placed")  # chunks placed by mixing, until the shards are written
    SHARD_FOLDER = Template("s{shard:05d}")
    GROUP_FOLDER = Template("g{group:05d}")
    PLACED_IN_SHARD = Template(PLACED_DIR.pattern + "/" + SHARD_FOLDER.pattern + "/{task}.arrow")  # Arrow IPC
    PLACED_IN_GROUP = Template(PLACED_DIR.pattern + "/" + GROUP_FOLDER.pattern + "/{task}.arrow")
    SHARDS_DIR = Template("{phase}/shards")
    SHARD = Template(SHARDS_DIR.pattern + "/shard-{shard:05d}.parquet")
    CARD = Template("{phase}/README.md")  # the Hugging Face dataset card: its YAML names the shards as data files
    OUTPUT_CARD = "README.md"  # the output's own card: a `datasets` config per built phase, named by its id
    MANIFEST_DIR = Template("{phase}/manifest")
    MANIFEST = Template(MANIFEST_DIR.pattern + "/{table}.parquet")
    RUN_RECORD = Template(MANIFEST_DIR.pattern + "/runs/{stamp}.parquet")  # a build's row of the phase's history
    RUN_STAMP = "%Y%m%dT%H%M%S.%fZ"  # a build's start (UTC) in its record's name: the names sort in time order
    REPORT_DIR = Template("{phase}/report")
    REPORT = Template(REPORT_DIR.pattern + "/{file}")
    MARKER_INDEX = Template(MARKERS + "/{stage}/index.json")  # a stage's completed tasks (pipeline/markers.py)
    MARKER_BATCH = Template(MARKERS + "/{stage}/batch-{batch:06d}.json")  # those completed since its index

    POOL_GLOB = POOL.glob()

    @classmethod
    def curated(cls, source: str, part: str) -> str:
        return cls.CURATED.format(source=source, part=part)

    @classmethod
    def rejects(cls, group: str, source: str, part: str, phase: str | None = None) -> str:
        fields = dict(group=group, source=source, part=part)
        return cls.PHASE_REJECTS.format(phase=phase, **fields) if phase else cls.REJECTS.format(**fields)

    @classmethod
    def rejects_globs(cls) -> list[str]:
        return [cls.REJECTS.glob(), cls.PHASE_REJECTS.glob(phase="phase*")]

    @classmethod
    def signatures(cls, config: object, source: str, part: str) -> str:
        return cls.SIGNATURES.format(config=config, source=source, part=part)

    @classmethod
    def dedup_steps(cls, config: object) -> str:
        """The folder of the relations between dedup's SQL steps."""
        return cls.DEDUP_STEPS.format(config=config)

    @classmethod
    def relation(cls, folder: str, step: str, relation: str) -> str:
        return cls.RELATION.format(folder=folder, step=step, relation=relation)

    @classmethod
    def partition(cls, partition: int) -> str:
        return cls.PARTITION.format(partition=partition)

    @classmethod
    def relation_file(cls, folder: str, task: str) -> str:
        """The rows one task wrote to the relation in `folder`, sorted by hash partition."""
        return cls.RELATION_FILE.format(folder=folder, task=task)

    @classmethod
    def clusters(cls, config: object) -> str:
        """A relation (a file per task, by hash partition of the curated files)."""
        return cls.CLUSTERS.format(config=config)

    @classmethod
    def clusters_glob(cls, config: object) -> str:
        return cls.RELATION_FILE.glob(folder=cls.clusters(config))

    @classmethod
    def removals(cls, config: object, source: str, part: str) -> str:
        return cls.REMOVALS.format(config=config, source=source, part=part)

    @classmethod
    def pool(cls, source: str, lang: str, part: str) -> str:
        return cls.POOL.format(source=source, lang=lang, part=part)

    @classmethod
    def placed_dir(cls, phase: str) -> str:
        return cls.PLACED_DIR.format(phase=phase)

    @classmethod
    def placed_in_shard(cls, phase: str, shard: int, task: str) -> str:
        """One mixing task's chunks of one shard (or, from a split task, one shard group's chunks of it)."""
        return cls.PLACED_IN_SHARD.format(phase=phase, shard=shard, task=task)

    @classmethod
    def placed_in_group(cls, phase: str, group: int, task: str) -> str:
        """One mixing task's chunks of one shard group, which a split task divides into shards."""
        return cls.PLACED_IN_GROUP.format(phase=phase, group=group, task=task)

    @classmethod
    def group_folder(cls, group: int) -> str:
        """A shard group's folder, which also names the file its split task writes in each of its shards."""
        return cls.GROUP_FOLDER.format(group=group)

    @classmethod
    def shards_dir(cls, phase: str) -> str:
        return cls.SHARDS_DIR.format(phase=phase)

    @classmethod
    def shard(cls, phase: str, number: int) -> str:
        return cls.SHARD.format(phase=phase, shard=number)

    @classmethod
    def shards_glob(cls, phase: str) -> str:
        return cls.SHARD.glob(phase=phase)

    @classmethod
    def card(cls, phase: str) -> str:
        return cls.CARD.format(phase=phase)

    @classmethod
    def manifest_dir(cls, phase: str) -> str:
        return cls.MANIFEST_DIR.format(phase=phase)

    @classmethod
    def manifest(cls, phase: str, table: str) -> str:
        return cls.MANIFEST.format(phase=phase, table=table)

    @classmethod
    def manifest_glob(cls, table: str) -> str:
        return cls.MANIFEST.glob(phase="phase*", table=table)

    @classmethod
    def run_record(cls, phase: str, started: datetime.datetime) -> str:
        return cls.RUN_RECORD.format(phase=phase, stamp=started.astimezone(datetime.UTC).strftime(cls.RUN_STAMP))

    @classmethod
    def run_records_glob(cls, phase: str = "phase*") -> str:
        """The run history of a phase (of every phase by default), one file per build."""
        return cls.RUN_RECORD.glob(phase=phase)

    @classmethod
    def report(cls, phase: str, name: str = "") -> str:
        """A file of the phase's report, or its folder."""
        return cls.REPORT.format(phase=phase, file=name) if name else cls.REPORT_DIR.format(phase=phase)

    @classmethod
    def marker_index(cls, stage: str) -> str:
        return cls.MARKER_INDEX.format(stage=stage)

    @classmethod
    def marker_batch(cls, stage: str, batch: int) -> str:
        return cls.MARKER_BATCH.format(stage=stage, batch=batch)

    @classmethod
    def built_folders(cls, phase: str) -> list[str]:
        """The folders a phase's build writes: curation's, which every phase's build shares, then the phase's own;
        and `stats`, where builds before the counters went into the task markers wrote a file per task (a build
        sweeps them away: no task writes there now)."""
        shared = [cls.CURATED, cls.POOL, cls.DEDUP, cls.REJECTS]
        own = [cls.SHARD, cls.PHASE_REJECTS]
        return [*(kind.folder() for kind in shared), *(kind.folder(phase=phase) for kind in own), "stats",
                f"{phase}/stats"]

    @staticmethod
    def in_phase(name: str, phase: str) -> bool:
        """Whether a name is one of the phase's own files (not curation's, which every phase shares)."""
        return name.startswith(f"{phase}/")

    @classmethod
    def read_after_build(cls, name: str) -> bool:
        """Whether the manifest, the catalog's views or a phase's summary read this file (not only the tasks
        downstream of it): such files are verified before every build's manifest."""
        patterns = [*cls.rejects_globs(), cls.POOL_GLOB, cls.clusters_glob("*"),
                    cls.manifest_glob("*")]
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
