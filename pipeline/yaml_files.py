"""Reading a YAML file of the recipe: a mapping at the top, no alias bomb, any problem a ConfigError naming it."""

from pathlib import Path

import yaml

from stages.settings import ConfigError

MAX_ALIAS_VALUES = 100_000  # values a YAML text may repeat through aliases; an alias bomb repeats billions


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            text = f.read()
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if "&" in text:  # no anchor, no alias: FineWeb2's 1,929 rows skip the walk
        check_aliases(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def check_aliases(data: object, source: str) -> None:
    """Refuse YAML whose aliases repeat more than MAX_ALIAS_VALUES values, or refer to themselves. The parser
    shares one object per anchor, so loading is quick; whatever walks the values (the settings' checks, `config
    show`, the run table's JSON) would walk every repeat, for minutes and gigabytes. This walk stops early."""
    seen: set[int] = set()
    repeated = 0
    stack = [data]
    while stack:
        value = stack.pop()
        if not isinstance(value, dict | list):
            continue
        items = list(value.values()) if isinstance(value, dict) else value
        if id(value) in seen:
            repeated += len(items)
            if repeated > MAX_ALIAS_VALUES:
                raise ConfigError(f"{source}: YAML aliases repeat more than {MAX_ALIAS_VALUES:,} values "
                                  "(an alias bomb?): refused")
        seen.add(id(value))
        stack.extend(items)
