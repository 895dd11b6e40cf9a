"""The recipe: one typed configuration tree, loaded once and passed down.

A recipe has six sections (pipeline/sections.py), each a YAML file (configs/recipe.yaml names the defaults) or a
mapping inline in a recipe file (`mmcorpus build -c recipe.yaml`): sources, tokenizers, lid, quality, dedup,
phases. Every section becomes the dataclass its stage declares (stages/*: fields with help), every key is
checked, relative paths resolve against the file that names them, and `--set section.key=value` overrides any
value. Every problem is a ConfigError naming the file and the key; the CLI prints it as one line and exits with
status 2.
"""

import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.overrides import Override, RawSections, blamed, parse_override
from pipeline.phases import PhaseConfig, PhasesConfig
from pipeline.sections import SECTIONS, SourcesConfig
from pipeline.yaml_files import read_yaml
from stages.assets import AssetSpec
from stages.dedup import DedupConfig
from stages.lid import LidConfig
from stages.paths import PROJECT_ROOT, RECIPE_FILE
from stages.quality import QualityConfig
from stages.settings import ConfigError, Where, check_keys, closest, plain
from stages.sources import READERS, SourceTerms

__all__ = ["ConfigError"]


@dataclass(frozen=True)
class Recipe:
    sources: SourcesConfig
    tokenizers: dict[str, AssetSpec]
    lid: LidConfig
    quality: QualityConfig
    dedup: DedupConfig
    phases: PhasesConfig
    files: dict[str, str]  # section -> the file it was read from
    overrides: tuple[tuple[Override, Where], ...] = field(default=(), compare=False)  # --set, where its section was

    def to_dict(self) -> dict:
        """The whole resolved recipe (FineWeb2's 1,929 rows stand as their file, whose sha256 the run records)."""
        return {
            "files": self.files,
            "sources": {"sources": {name: plain(options) | plain(self.sources.terms.get(name, SourceTerms()))
                                    for name, options in self.sources.sources.items()},
                        "shard_tokens": self.sources.shard_tokens},
            "tokenizers": plain(self.tokenizers), "lid": plain(self.lid), "quality": plain(self.quality),
            "dedup": plain(self.dedup), "phases": {str(k): v for k, v in self.phases.entries.items()},
        }

    def phase(self, number: int, variant: str | None = None) -> PhaseConfig:
        """A phase to build: its sources named or configured; the input's shard_tokens, which replaces the phase's,
        holds a sequence at least. An error about a value that `--set` gave names the option."""
        try:
            return self._phase(number, variant)
        except ConfigError as error:
            raise blamed(error, self.overrides) from None

    def _phase(self, number: int, variant: str | None) -> PhaseConfig:
        phase = self.phases.phase(number, variant)
        known = [*READERS, *(name for name in self.sources.sources if name not in READERS)]
        for unknown in sorted(set(phase.other_sources) - set(known)):
            raise (Where(self.phases.file) / number / "other_sources").error(
                f"unknown source {unknown!r}{closest(unknown, known)}")
        shard_tokens = self.sources.shard_tokens
        if shard_tokens is not None and shard_tokens < phase.seq_len:
            raise (self.sources.where / "shard_tokens").error(
                f"must be >= the seq_len of {phase.id} ({phase.seq_len}), got {shard_tokens}")
        return phase

    def assets(self) -> dict[str, AssetSpec]:
        """Every model and tokenizer file the recipe names, by role."""
        return {**{f"tokenizer:{role}": spec for role, spec in self.tokenizers.items()}, "lid:model": self.lid.model}


def load_recipe(recipe: Path | None = None, sections: dict[str, Path | dict | None] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe file's sections (configs/recipe.yaml by default), each replaced by its own file or mapping where
    given, then the `--set` overrides; every section checked. LID's upstream thresholds come from the quality
    section's FineWeb2 rows."""
    recipe = recipe or RECIPE_FILE
    named = read_yaml(recipe) if recipe != RECIPE_FILE or recipe.exists() else {}
    check_keys(named, SECTIONS, Where(recipe))
    raw: RawSections = {}
    for name, section in SECTIONS.items():
        given = (sections or {}).get(name)
        entry = named.get(name, section.file) if given is None else given
        if isinstance(entry, dict):
            raw[name] = (entry, Where(recipe, (name,)))
        elif isinstance(entry, str | Path):
            path = Path(entry) if given is not None else (recipe.parent / os.path.expanduser(str(entry))).resolve()
            raw[name] = (read_yaml(path), Where(path))
        else:
            raise Where(recipe, (name,)).error("expected a file name or a mapping")
    changes: list[Override] = []
    for text in overrides:
        changes.append(parse_override(text))
        changes[-1].apply(raw)
    given = tuple((change, raw[change.section][1]) for change in changes)
    try:
        loaded = {name: SECTIONS[name].read(data, where) for name, (data, where) in raw.items()}
    except ConfigError as error:
        raise blamed(error, given) from None
    loaded["lid"] = replace(loaded["lid"], upstream_min_scores=loaded["quality"].upstream_min_scores())
    files = {name: str(where.file) for name, (_, where) in raw.items()}
    return Recipe(files=files, overrides=given, **loaded)


def git_commit() -> str | None:
    """The project's commit (a Ray job's copy has no .git: the submitter passes it as MMCORPUS_GIT_COMMIT)."""
    if os.environ.get("MMCORPUS_GIT_COMMIT"):
        return os.environ["MMCORPUS_GIT_COMMIT"]
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")
