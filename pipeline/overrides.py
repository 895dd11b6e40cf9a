"""`--set section.key=value`: the setting an override names, checked against its section, and the value it gives."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.sections import SECTIONS
from pipeline.yaml_files import check_aliases
from stages.settings import ConfigError, Where, closest

RawSections = dict[str, tuple[dict, Where]]  # section -> (its YAML mapping, where it was read)


@dataclass(frozen=True)
class Override:
    text: str  # the option as given
    section: str
    keys: list[str]
    value: Any

    def apply(self, raw: RawSections) -> None:
        """Write the value into its section's mapping, making the mappings above it where missing."""
        data = raw[self.section][0]
        for key in self.keys[:-1]:
            key = next((k for k in data if str(k) == key), key)  # phases are numbered: YAML keys are ints
            data = data.setdefault(key, {})
            if not isinstance(data, dict):
                raise ConfigError(f"--set {self.text}: {key} is not a mapping")
        data[next((k for k in data if str(k) == self.keys[-1]), self.keys[-1])] = self.value


def parse_override(text: str) -> Override:
    """`quality.fixed.min_doc_words=100` -> ("quality", ["fixed", "min_doc_words"], 100); the key path checked
    against the section's settings, the value read as YAML."""
    path, sep, value = text.partition("=")
    keys = path.strip().split(".")
    if not sep or len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {text}: expected section.key=value (e.g. quality.fixed.min_doc_words=100)")
    if keys[0] not in SECTIONS:
        raise ConfigError(f"--set {text}: unknown section {keys[0]!r}{closest(keys[0], SECTIONS)}")
    SECTIONS[keys[0]].check_keys(keys[1:], f"--set {text}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text}: not a YAML value: {' '.join(str(error).split())}") from None
    check_aliases(parsed, f"--set {text}")
    return Override(text, keys[0], keys[1:], parsed)


def blamed(error: ConfigError, overrides: Iterable[tuple[Override, Where]]) -> ConfigError:
    """The error as a `--set` option's (each given with where its section was read) when it is about a value the
    option gave (at or below its key), or about a mapping the option changed (a check across its fields, as
    shard_tokens >= seq_len): the option, not the file, holds the value at fault."""
    at = error.where
    for override, where in overrides:
        key = (*where.keys, *override.keys)
        if at is not None and at.file == where.file and len(at.keys) > len(where.keys) and (
                at.keys[:len(key)] == key or key[:len(at.keys)] == at.keys):
            return Where(f"--set {override.text}", at.keys[len(where.keys):]).error(error.reason)
    return error
