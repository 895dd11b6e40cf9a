"""Files the pipeline loads by configured path (tokenizers, LID models), and where set-up puts them."""

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from manifests.writer import sha256_file

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
class AssetSpec:
    path: str
    sha256: str | None = None

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
