"""Where the project's own files are: its root, the configs, the bundled samples, the language tables."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
SAMPLES_DIR = PROJECT_ROOT / "samples"
RECIPE_FILE = CONFIG_DIR / "recipe.yaml"
COUNTS_FILE = CONFIG_DIR / "mmbert-language-counts.csv"  # mmBERT's tokens per language and phase
LANGUAGES_FILE = CONFIG_DIR / "languages.csv"  # short codes and scripts of every language
FINEWEB2_THRESHOLDS = CONFIG_DIR / "fineweb2-thresholds.yaml"  # FineWeb2's rows: its 1,929 lang_Script labels
BENCH_RESULTS = PROJECT_ROOT / "bench" / "results.json"  # measured rates, for `plan --cost`
