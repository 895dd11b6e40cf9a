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

`save` writes the same layout and the legacy config keys (`global_attn_every_n_layers`, `global_rope_theta`,
`local_rope_theta`) that the published configs carry, which transformers 4.x and 5.x both read.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


class CheckpointError(ValueError):
    """A checkpoint that does not describe this encoder; the message names the file and the problem."""


def ours(name: str) -> str | None:
    layer = LAYER.fullmatch(name)
    return layer.group(1) if layer else NAMES.get(name)


def theirs(name: str) -> str:
    return next((key for key, value in NAMES.items() if value == name), f"model.{name}")


def read_config(directory: Path) -> EncoderConfig:
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a Hugging Face checkpoint directory has config.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not JSON ({error})") from None
    if raw.get("model_type") != "modernbert":
        raise CheckpointError(f"{path}: model_type is {raw.get('model_type')!r}, not 'modernbert'")
    for key, expected in FIXED.items():
        if raw.get(key, expected) != expected:
            raise CheckpointError(f"{path}: {key} is {raw[key]!r}; this encoder supports only {expected!r}")
    try:
        n_layers = int(raw["num_hidden_layers"])
        global_every = _global_every(raw, n_layers)
        global_theta, local_theta = _rope_thetas(raw)
        return EncoderConfig(
            vocab_size=int(raw["vocab_size"]), n_layers=n_layers, hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]), intermediate=int(raw["intermediate_size"]),
            local_window=int(raw.get("local_attention", 128)), global_every=global_every,
            global_rope_theta=global_theta, local_rope_theta=local_theta, norm_eps=float(raw.get("norm_eps", 1e-5)),
            init_std=float(raw.get("initializer_range", 0.02)), pad_id=int(raw.get("pad_token_id") or 0))
    except KeyError as error:
        raise CheckpointError(f"{path}: no {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _global_every(raw: dict, n_layers: int) -> int:
    """transformers 5 writes `layer_types`; older configs (and mmBERT's) `global_attn_every_n_layers`."""
    every = int(raw.get("global_attn_every_n_layers", 3))
    types = raw.get("layer_types")
    if types is not None:
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


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `model.safetensors`, or of the shards its index lists."""
    single, index = directory / WEIGHTS, directory / WEIGHTS_INDEX
    if single.is_file():
        return load_file(single)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {name: tensor for file in files for name, tensor in load_file(directory / file).items()}
    raise CheckpointError(f"{directory}: no {WEIGHTS} or {WEIGHTS_INDEX}")


def load(directory: str | Path, config: EncoderConfig | None = None) -> Encoder:
    """An Encoder holding the checkpoint's weights. `config` (e.g. the phase's RoPE θ) must agree in shape."""
    directory = Path(directory)
    stored = read_config(directory)
    config = config or stored
    for field in ("vocab_size", "n_layers", "hidden", "heads", "intermediate", "global_every"):
        if getattr(config, field) != getattr(stored, field):
            raise CheckpointError(f"{directory / CONFIG}: {field} is {getattr(stored, field)}, the model asks for "
                                  f"{getattr(config, field)}")
    weights = read_weights(directory)
    state, unknown = {}, []
    for name, tensor in weights.items():
        target = ours(name.removeprefix("_orig_mod."))
        if target is not None:
            state[target] = tensor
        elif name != TIED:
            unknown.append(name)
    model = Encoder(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        problems = [f"unknown {', '.join(sorted(unknown)[:5])}"] if unknown else []
        problems += [f"missing {', '.join(map(theirs, missing[:5]))}"] if missing else []
        raise CheckpointError(f"{directory}: weights not of a ModernBertForMaskedLM: {'; '.join(problems)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{directory}: {theirs(name)} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[name].shape)}")
    if TIED in weights and not torch.equal(weights[TIED], state["embeddings.weight"]):
        raise CheckpointError(f"{directory}: {TIED} differs from the embeddings; this encoder ties them")
    model.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in state.items()})
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
