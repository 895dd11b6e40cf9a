"""Files the pipeline loads by configured path (tokenizers, LID models), and where set-up puts them."""

import os
from dataclasses import dataclass
from pathlib import Path

from manifests.writer import sha256_file

DEFAULT_CACHE = Path.home() / ".cache" / "mmcorpus"


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
        if self.sha256 and sha256_file(local) != self.sha256:
            raise ValueError(f"{local} does not match sha256 {self.sha256}")
        return local
