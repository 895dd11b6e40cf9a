"""Hugging Face ModernBERT / mmBERT checkpoints (`config.json` + `model.safetensors`) in and out of `Encoder`.

A published mmBERT directory (e.g. jhu-clsp/mmBERT-base, downloaded by the user) loads by name mapping:

    model.embeddings.tok_embeddings.weight   embeddings.weight
    model.embeddings.norm.weight             embedding_norm.weight
    model.layers.{i}.<same names>            layers.{i}.<same names>
    model.final_norm.weight                  final_norm.weight
    head.dense.weight                        head.weight
    head.norm.weight                         head_norm.weight
    decoder.bias                             decoder_bias
    decoder.weight                           tied to the embeddings: checked equal, never stored twice

`load` refuses, with a `CheckpointError` naming the file and the problem, a checkpoint it cannot load
faithfully: a config no encoder can be built from, weight files outside the folder (an index's `weight_map`
is data, not a path to follow anywhere), fewer stored parameters than the config describes (checked from the
safetensors headers before any model is allocated), names or shapes that do not fit, NaN or inf weights.

`save` writes the same layout and the legacy config keys (`global_attn_every_n_layers`, `global_rope_theta`,
`local_rope_theta`) that the published configs carry, which transformers 4.x and 5.x both read.
"""

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reference.model import Encoder, EncoderConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

# checkpoint name -> ours; the layers keep their names under `model.`
NAMES = {
    "model.embeddings.tok_embeddings.weight": "embeddings.weight",
    "model.embeddings.norm.weight": "embedding_norm.weight",
    "model.final_norm.weight": "final_norm.weight",
    "head.dense.weight": "head.weight",
    "head.norm.weight": "head_norm.weight",
    "decoder.bias": "decoder_bias",
}
LAYER = re.compile(r"model\.(layers\.\d+\.(?:attn_norm|attn\.Wqkv|attn\.Wo|mlp_norm|mlp\.Wi|mlp\.Wo)\.weight)")
TIED = "decoder.weight"
# Settings our model has no switch for: a checkpoint that departs from them cannot load faithfully.
FIXED = {"hidden_activation": "gelu", "classifier_activation": "gelu", "norm_bias": False, "attention_bias": False,
         "mlp_bias": False, "classifier_bias": False}
# our size fields and their config.json keys, so that a range error names what the user can see in the file
SIZES = {"vocab_size": "vocab_size", "n_layers": "num_hidden_layers", "hidden": "hidden_size",
         "heads": "num_attention_heads", "intermediate": "intermediate_size", "local_window": "local_attention",
         "global_every": "global_attn_every_n_layers"}


class CheckpointError(ValueError):
    """A checkpoint that does not describe this encoder; the message names the file and the problem."""


def ours(name: str) -> str | None:
    layer = LAYER.fullmatch(name)
    return layer.group(1) if layer else NAMES.get(name)


def theirs(name: str) -> str:
    return next((key for key, value in NAMES.items() if value == name), f"model.{name}")


def read_config(directory: Path) -> EncoderConfig:
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a folder (a Hugging Face checkpoint is a folder with {CONFIG})")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a Hugging Face checkpoint directory has config.json)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise CheckpointError(f"{path}: not JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    if raw.get("model_type") != "modernbert":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, not 'modernbert'")
    for key, expected in FIXED.items():
        if raw.get(key, expected) != expected:
            raise CheckpointError(f"{path}: {key} is {raw[key]!r}; this encoder supports only {expected!r}")
    try:
        n_layers = int(raw["num_hidden_layers"])
        global_every = _global_every(raw, n_layers)
        global_theta, local_theta = _rope_thetas(raw)
        config = EncoderConfig(
            vocab_size=int(raw["vocab_size"]), n_layers=n_layers, hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]), intermediate=int(raw["intermediate_size"]),
            local_window=int(raw.get("local_attention", 128)), global_every=global_every,
            global_rope_theta=global_theta, local_rope_theta=local_theta, norm_eps=float(raw.get("norm_eps", 1e-5)),
            init_std=float(raw.get("initializer_range", 0.02)), pad_id=int(raw.get("pad_token_id") or 0))
        _check_ranges(config)
    except KeyError as error:
        raise CheckpointError(f"{path}: no {error.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError, AttributeError) as error:  # Infinity, a list for a dict, ...
        raise CheckpointError(f"{path}: {error}") from None
    return config


def _check_ranges(config: EncoderConfig) -> None:
    """A ValueError naming the first setting no encoder can be built from."""
    for field, key in SIZES.items():
        if getattr(config, field) < 1:
            raise ValueError(f"{key} is {getattr(config, field)}; it must be at least 1")
    if config.hidden % config.heads or config.hidden // config.heads % 2:
        raise ValueError(f"hidden_size {config.hidden} does not split into {config.heads} heads of an even size "
                         "(RoPE rotates pairs of dimensions)")
    if not 0 <= config.pad_id < config.vocab_size:
        raise ValueError(f"pad_token_id is {config.pad_id}, outside the vocabulary of {config.vocab_size}")
    for key, value in (("norm_eps", config.norm_eps), ("initializer_range", config.init_std),
                       ("global_rope_theta", config.global_rope_theta), ("local_rope_theta", config.local_rope_theta)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{key} is {value}; it must be a positive number")


def _global_every(raw: dict, n_layers: int) -> int:
    """transformers 5 writes `layer_types`; older configs (and mmBERT's) `global_attn_every_n_layers`."""
    every = int(raw.get("global_attn_every_n_layers", 3))
    types = raw.get("layer_types")
    if types is not None:
        if len(types) != n_layers:  # before listing the expected types: n_layers may be anything
            raise ValueError(f"layer_types has {len(types)} entries for num_hidden_layers {n_layers}")
        globals_ = [i for i, kind in enumerate(types) if kind == "full_attention"]
        every = globals_[1] if len(globals_) > 1 else n_layers
        expected = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(n_layers)]
        if types != expected:
            raise ValueError(f"layer_types {types} is not a global layer every n layers starting at layer 0")
    return every


def _rope_thetas(raw: dict) -> tuple[float, float]:
    parameters = raw.get("rope_parameters") or {}
    for kind in parameters.values():
        if kind.get("rope_type", "default") != "default":
            raise ValueError(f"rope_type {kind['rope_type']!r}: only the default RoPE is supported")
    global_theta = parameters.get("full_attention", {}).get("rope_theta", raw.get("global_rope_theta", 160_000.0))
    local_theta = parameters.get("sliding_attention", {}).get("rope_theta", raw.get("local_rope_theta", 10_000.0))
    return float(global_theta), float(local_theta)


def weight_files(directory: Path) -> list[Path]:
    """`model.safetensors`, or the shards its index lists, each resolved and confined to the checkpoint folder."""
    single, index = directory / WEIGHTS, directory / WEIGHTS_INDEX
    if single.is_file():
        names = [WEIGHTS]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index}: no weight_map of tensor names to file names ({error!r})") from None
        if not all(isinstance(name, str) for name in names):
            raise CheckpointError(f"{index}: weight_map has values that are not file names")
    else:
        raise CheckpointError(f"{directory}: no {WEIGHTS} or {WEIGHTS_INDEX}")
    files = []
    for name in names:
        # The index is data, so its names must stay in the folder as written (no `../`, no absolute path); links the
        # folder itself holds are followed, as a Hugging Face cache snapshot's links into its blobs.
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise CheckpointError(f"{directory}: weight file {name!r} is outside the checkpoint folder")
        try:
            path = (directory / name).resolve()
        except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL in the name
            raise CheckpointError(f"{directory}: weight file {name!r}: {error}") from None
        if not path.is_file():
            raise CheckpointError(f"{directory}: weight file {name!r} is missing")
        files.append(path)
    return files


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the files' headers, which safetensors checks against the files' lengths; no
    weight is read."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, "pt") as handle:
                for name in handle.keys():
                    if name in shapes:
                        raise CheckpointError(f"{file}: {name} is in another weight file too")
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: not a safetensors file ({error})") from None
    return shapes


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `model.safetensors`, or of the shards its index lists."""
    weights = {}
    for file in weight_files(directory):
        try:
            with safe_open(file, "pt") as handle:
                weights |= {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file}: not a safetensors file ({error})") from None
    return weights


def parameter_count(config: EncoderConfig) -> int:
    """The parameters `Encoder(config)` holds, counted from one- and two-layer models on the meta device, so
    that a config asking for 200,000 layers costs nothing to count."""
    with torch.device("meta"):
        one, two = (Encoder(replace(config, n_layers=n)).num_parameters() for n in (1, 2))
    return one + (config.n_layers - 1) * (two - one)


def load(directory: str | Path, config: EncoderConfig | None = None) -> Encoder:
    """An Encoder holding the checkpoint's weights. `config` (e.g. the phase's RoPE θ) must agree in shape."""
    directory = Path(directory)
    stored = read_config(directory)
    config = config or stored
    for field in ("vocab_size", "n_layers", "hidden", "heads", "intermediate", "global_every"):
        if getattr(config, field) != getattr(stored, field):
            raise CheckpointError(f"{directory / CONFIG}: {field} is {getattr(stored, field)}, the model asks for "
                                  f"{getattr(config, field)}")
    files = weight_files(directory)
    shapes = read_shapes(files)
    names, unknown = {}, []
    for name in shapes:
        target = ours(name.removeprefix("_orig_mod."))
        if target is not None:
            names[target] = name
        elif name != TIED:
            unknown.append(name)
    # Checked before even the meta device builds the model, as building 200,000 layers there takes minutes;
    # with no more layers than the files hold tensors for, the names and shapes below account for every byte.
    held_layers = len({target.split(".")[1] for target in names if target.startswith("layers.")})
    if config.n_layers > held_layers:
        held = sum(math.prod(shape) for name, shape in shapes.items() if name != TIED)
        size = sum(file.stat().st_size for file in files)
        raise CheckpointError(f"{directory / CONFIG}: num_hidden_layers {config.n_layers:,} describes "
                              f"{parameter_count(config):,} parameters; the weight files hold {held_layers} layers, "
                              f"{held:,} parameters in {size:,} bytes")
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in Encoder(config).state_dict().items()}
    missing = sorted(set(expected) - set(names))
    if unknown or missing:
        problems = [f"unknown {', '.join(sorted(unknown)[:5])}"] if unknown else []
        problems += [f"missing {', '.join(map(theirs, missing[:5]))}"] if missing else []
        raise CheckpointError(f"{directory}: weights not of a ModernBertForMaskedLM: {'; '.join(problems)}")
    for target, name in names.items():
        if shapes[name] != expected[target]:
            raise CheckpointError(f"{directory}: {name} has shape {shapes[name]}, expected {expected[target]}")
    embeddings = expected["embeddings.weight"]
    if TIED in shapes and shapes[TIED] != embeddings:
        raise CheckpointError(f"{directory}: {TIED} has shape {shapes[TIED]}, expected {embeddings}")
    weights = read_weights(directory)
    for name, tensor in weights.items():
        finite = torch.isfinite(tensor)
        if not finite.all():
            raise CheckpointError(f"{directory}: {name} holds {finite.numel() - int(finite.sum()):,} NaN or infinite "
                                  f"values of {finite.numel():,}")
    state = {target: weights[name] for target, name in names.items()}
    if TIED in weights and not torch.equal(weights[TIED], state["embeddings.weight"]):
        raise CheckpointError(f"{directory}: {TIED} differs from the embeddings; this encoder ties them")
    model = Encoder(config)
    model.load_state_dict(state)  # copied into the model's dtype
    return model


def save(model: Encoder, directory: str | Path) -> Path:
    """Write `model` as a Hugging Face ModernBertForMaskedLM checkpoint that transformers loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = model.config
    config = {
        "architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden, "intermediate_size": c.intermediate, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.heads, "local_attention": c.local_window,
        "global_attn_every_n_layers": c.global_every,
        "global_rope_theta": c.global_rope_theta, "local_rope_theta": c.local_rope_theta, "norm_eps": c.norm_eps,
        "initializer_range": c.init_std, "pad_token_id": c.pad_id, "tie_word_embeddings": True,
        "decoder_bias": True, "torch_dtype": str(model.embeddings.weight.dtype).removeprefix("torch."),
    } | FIXED
    weights = {theirs(name): tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(weights, directory / WEIGHTS, metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory
