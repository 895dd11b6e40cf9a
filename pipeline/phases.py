"""A phase of the recipe: its settings, and how the phases YAML gives each (a number, variants, a default)."""

from dataclasses import dataclass, fields
from pathlib import Path

from stages.languages import LanguageSet, usual_label
from stages.mix import FINEWEB2_BANDS, ChunkRules, RehydrateBand, check_bands
from stages.settings import ConfigError, Where, check_keys, convert, load, plain, setting


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of the recipe (docs/architecture.md section 10); a YAML `variants` entry overrides any field."""

    name: str = setting(help="the phase's name (pre-training, mid-training, decay)")
    budget_tokens: float = setting(help="the full-scale token budget (a sample build defaults to its pool)", gt=0)
    languages: LanguageSet = setting(help="the phase's language set: a column of mmBERT's counts")
    temperature: float = setting(help="sampling temperature τ: p(lang) ∝ n(lang)^τ", gt=0, le=1)
    max_epochs: float = setting(help="the most epochs of any (source, language)", ge=1)
    seq_len: int = setting(help="tokens per training sequence, bos and eos included", gt=2)
    min_chunk_tokens: int = setting(
        help="a later piece of a split document shorter than this takes tokens moved from the chunk before it "
             "(mmBERT's backfill); at most seq_len - 2", ge=1)
    always_skip: int = setting(help="a later piece of a split document shorter than this is dropped (the first "
                                    "piece is always kept)", ge=0)
    mask_rate: float = setting(help="MLM mask rate of the phase (the encoder reference uses it)", gt=0, lt=1)
    global_rope_theta: float = setting(help="RoPE θ of the global attention layers (the encoder reference's)", gt=0)
    local_rope_theta: float = setting(help="RoPE θ of the local (sliding-window) attention layers", gt=0)
    shard_tokens: int = setting(help="tokens per shard, at least seq_len (the sources config may set it for its "
                                     "input)")
    fineweb2_share: float = setting(help="FineWeb2's part of the budget", ge=0, le=1)
    other_sources: dict[str, float] = setting(factory=dict, help="the rest of the budget, in these proportions",
                                              ge=0)
    fixed_shares: dict[str, float] = setting(factory=dict, help="languages with a pinned share (decay-eng); "
                                                                "they sum to less than 1", ge=0, lt=1)
    quality_quantile: float = setting(
        0.0, help="keep documents at or above this quality quantile per language", ge=0, lt=1)
    rehydrate: bool = setting(False, help="repeat FineWeb2 documents by their upstream minhash_cluster_size band "
                                          "(re-hydration), within the epoch cap")
    rehydrate_bands: tuple[RehydrateBand, ...] = setting(
        FINEWEB2_BANDS, help="cluster-size bands and the copies each counts for (the last band open: null)")
    number: int = setting(0, help="the phase number (from the YAML key)")
    variant: str | None = setting(None, help="the variant built (from --variant or default_variant)")
    default_variant: str | None = setting(None, help="the variant `--phase N` builds")

    def __post_init__(self) -> None:
        checks = [  # each field's own range is checked as it is read (setting(..., ge=...))
            (self.min_chunk_tokens <= self.seq_len - 2,  # a backfilled piece must leave its donor a token
             f"min_chunk_tokens must be <= seq_len - 2 ({self.seq_len - 2}), got {self.min_chunk_tokens}"),
            (self.shard_tokens >= self.seq_len,  # a smaller shard holds less than a sequence, and is a task each
             f"shard_tokens must be >= seq_len ({self.seq_len}), got {self.shard_tokens}"),
            (sum(self.fixed_shares.values()) < 1, "fixed_shares must sum to less than 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_bands(self.rehydrate_bands)

    @property
    def id(self) -> str:
        """phase1, phase2, phase3 (its default variant), phase3-eng, phase3-cont."""
        named = self.variant and self.variant != self.default_variant
        return f"phase{self.number}-{self.variant}" if named else f"phase{self.number}"

    @property
    def chunking(self) -> ChunkRules:
        return ChunkRules(self.seq_len, self.min_chunk_tokens, self.always_skip)

    @property
    def language_codes(self) -> frozenset[str]:
        """ISO 639-3 codes as in mmBERT's counts, `code` for code."""
        return self.languages.resolve()

    @property
    def bands(self) -> tuple[RehydrateBand, ...] | None:
        """The re-hydration bands when the phase re-hydrates."""
        return self.rehydrate_bands if self.rehydrate else None

    def to_dict(self) -> dict:
        # the labels: what the data cards list a language without data as (manifests/languages.py)
        return plain(self) | {"id": self.id, "language_count": len(self.language_codes),
                              "language_labels": sorted(map(usual_label, self.language_codes))}


@dataclass(frozen=True)
class PhasesConfig:
    """The phases YAML: phase number -> its fields, `variants` (name -> overrides) and `default_variant`."""

    entries: dict[int, dict]
    file: Path | str

    def phase(self, number: int, variant: str | None = None) -> PhaseConfig:
        where = Where(self.file)
        entry = self.entries.get(number)
        if entry is None:
            raise ConfigError(f"{self.file}: no phase {number} (phases: {', '.join(map(str, self.entries))})")
        variants = entry.get("variants") or {}
        default = entry.get("default_variant")
        variant = variant or default
        if variant is not None and variant not in variants:
            known = ", ".join(variants) or "none"
            raise ConfigError(f"{self.file}: phase {number} has no variant {variant!r} (variants: {known})")
        own = [f.name for f in fields(PhaseConfig) if f.name not in ("number", "variant", "default_variant")]
        check_keys(entry, [*own, "variants", "default_variant"], where / number)
        if not isinstance(variants, dict):
            raise (where / number / "variants").error("expected a mapping of variant names to overrides")
        for name, overrides in variants.items():
            if not isinstance(overrides, dict):
                raise (where / number / "variants" / name).error("expected a mapping of overrides")
            check_keys(overrides, own, where / number / "variants" / name)
        base = {k: v for k, v in entry.items() if k not in ("variants", "default_variant")}
        merged = base | variants.get(variant, {}) | {"number": number, "variant": variant, "default_variant": default}
        label = where / number / "variants" / variant if variant else where / number
        return load(PhaseConfig, merged, label)

    def numbers(self) -> list[int]:
        return sorted(self.entries)

    def validate(self) -> None:
        """Every phase and every variant, as a build of any of them would."""
        for number in self.numbers():
            for variant in [None, *(self.entries[number].get("variants") or {})]:
                self.phase(number, variant)


def parse_phases(data: dict, where: Where) -> PhasesConfig:
    """The phases YAML: every phase and variant checked now, so a typo in one not built still stops the build."""
    entries = {}
    for key, entry in data.items():
        number = convert(int, key, where)
        if not isinstance(entry, dict):
            raise (where / key).error("expected a mapping of phase fields")
        entries[number] = entry
    phases = PhasesConfig(entries, where.file)
    phases.validate()
    return phases
