"""Hugging Face checkpoint I/O: safetensors (single file or sharded index) <-> :class:`Transformer` state.

Reads and writes the transformers layout (``config.json`` + ``model.safetensors`` or
``model.safetensors.index.json`` + shards, tokenizer files) with ``safetensors.numpy`` only -- no torch, no
pickle. Linear weights are stored ``[out, in]`` by transformers and ``[in, out]`` here; per-layer tensors are
stacked on a leading layer axis. Any missing, mis-shaped or unexpected decoder tensor is a :class:`UsageError`
naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_directory, import_transformers
from infalign_jax.models.config import ModelConfig
from infalign_jax.models.transformer import Transformer, param_shapes

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"  # read for its EOS ids only
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# prefixes under which text decoders are stored (CausalLM; Gemma 3 multimodal wrappers, old and new layout)
_PREFIXES = ("model.", "model.language_model.", "language_model.model.")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_names(config: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter name -> (HF tensor name with ``{i}`` for the layer index, transposed?)."""
    gemma = config.arch == "gemma3"
    layer = {
        "attn_norm": ("input_layernorm.weight", False),
        "q": ("self_attn.q_proj.weight", True),
        "k": ("self_attn.k_proj.weight", True),
        "v": ("self_attn.v_proj.weight", True),
        "o": ("self_attn.o_proj.weight", True),
        "q_bias": ("self_attn.q_proj.bias", False),
        "k_bias": ("self_attn.k_proj.bias", False),
        "v_bias": ("self_attn.v_proj.bias", False),
        "o_bias": ("self_attn.o_proj.bias", False),
        "q_norm": ("self_attn.q_norm.weight", False),
        "k_norm": ("self_attn.k_norm.weight", False),
        "attn_post_norm": ("post_attention_layernorm.weight", False),
        "mlp_norm": (
            ("pre_feedforward_layernorm" if gemma else "post_attention_layernorm") + ".weight",
            False,
        ),
        "mlp_post_norm": ("post_feedforward_layernorm.weight", False),
        "gate": ("mlp.gate_proj.weight", True),
        "up": ("mlp.up_proj.weight", True),
        "down": ("mlp.down_proj.weight", True),
        "gate_bias": ("mlp.gate_proj.bias", False),
        "up_bias": ("mlp.up_proj.bias", False),
        "down_bias": ("mlp.down_proj.bias", False),
    }
    out = {"embed": ("model.embed_tokens.weight", False), "final_norm": ("model.norm.weight", False)}
    out["lm_head"] = ("lm_head.weight", True)
    out.update({f"layers.{k}": (f"model.layers.{{i}}.{name}", t) for k, (name, t) in layer.items()})
    return {k: v for k, v in out.items() if k in param_shapes(config)}


# ------------------------------------------------------------------------------------------------ reading
def read_hf_config(path: str | os.PathLike) -> ModelConfig:
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise UsageError(f"{path} is not a Hugging Face model directory: {CONFIG_NAME} not found")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{cfg_path} is not valid JSON: {e}") from None
    config = ModelConfig.from_hf_config(cfg)
    extra = [e for e in _generation_eos_ids(path) if e not in config.eos_token_ids]
    if extra:  # e.g. Gemma 3 instruct: <end_of_turn> (106) is listed in generation_config.json only
        config = config.replace(eos_token_id=config.eos_token_ids + tuple(extra))
    return config


def _generation_eos_ids(path: Path) -> tuple[int, ...]:
    """The EOS ids of ``generation_config.json`` (what transformers' ``generate`` stops at), if any."""
    gen_path = path / GENERATION_CONFIG_NAME
    if not gen_path.is_file():
        return ()
    try:
        eos = json.loads(gen_path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UsageError(f"{gen_path} is not a valid generation config: {e}") from None
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in eos):
        raise UsageError(f"{gen_path}: eos_token_id must be token ids >= 0, got {eos!r}")
    return tuple(eos)


def _opened(file: Path):
    """``safe_open(file, "np")``; a file that is not safetensors is one UsageError naming it (a git-lfs
    pointer — a checkout without `git lfs pull` — gets its own hint)."""
    try:
        return safe_open(file, "np")
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
        with open(file, "rb") as f:
            lfs = f.read(64).startswith(b"version https://git-lfs")
        hint = " (a git-lfs pointer, not the weights: run `git lfs pull`)" if lfs else ""
        raise UsageError(f"{file} is not a readable safetensors file{hint}: {e}") from None


class _TensorFiles:
    """Lazy name -> numpy reader over one ``model.safetensors`` or a sharded index."""

    def __init__(self, path: Path):
        index, single = path / INDEX_NAME, path / WEIGHTS_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map")
            except (ValueError, AttributeError) as e:
                raise UsageError(f"{index} is not a valid safetensors index: {e}") from None
            if not isinstance(weight_map, dict):
                raise UsageError(f"{index} has no 'weight_map'")
            self.where = {name: path / file for name, file in weight_map.items()}
        elif single.is_file():
            with _opened(single) as f:
                self.where = {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        else:
            found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
            hint = (
                " (PyTorch .bin checkpoints are not supported: convert to safetensors)"
                if any(n.endswith(".bin") for n in found)
                else ""
            )
            raise UsageError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}{hint}")
        for file in set(self.where.values()):
            if not file.is_file():
                raise UsageError(f"safetensors shard {file} listed in the index does not exist")
        self._open: dict[Path, Any] = {}

    def names(self) -> set[str]:
        return set(self.where)

    def get(self, name: str) -> np.ndarray:
        file = self.where[name]
        if file not in self._open:
            self._open[file] = _opened(file).__enter__()
        try:
            return self._open[file].get_tensor(name)
        except Exception as e:  # safetensors' SafetensorError: missing tensor, truncated data
            raise UsageError(f"cannot read tensor {name!r} from {file}: {e}") from None

    def close(self) -> None:
        for f in self._open.values():
            f.__exit__(None, None, None)
        self._open.clear()


def _find_prefix(names: set[str]) -> str:
    for prefix in _PREFIXES:
        if f"{prefix}embed_tokens.weight" in names:
            return prefix
    raise UsageError("checkpoint has no embedding tensor 'model.embed_tokens.weight'")


def load_params(config: ModelConfig, get, names: set[str]) -> dict[str, Any]:
    """Builds the nested params dict from HF tensors; ``get(name) -> np.ndarray``.

    Raises :class:`UsageError` naming the first missing, mis-shaped or unexpected decoder tensor.
    """
    prefix = _find_prefix(names)

    def hf(name: str) -> str:
        return prefix + name[len("model.") :] if name.startswith("model.") else name

    dtype = jnp.dtype(config.dtype)
    used: set[str] = set()
    params: dict[str, Any] = {"layers": {}}
    shapes = param_shapes(config)
    for ours, (template, transpose) in hf_names(config).items():
        shape = shapes[ours][0]
        per_layer = ours.startswith("layers.")
        keys = [hf(template.format(i=i)) for i in range(config.num_layers)] if per_layer else [hf(template)]
        arrays = []
        for key in keys:
            if key not in names:
                if ours == "lm_head" and not config.tie_embeddings:
                    raise UsageError(f"missing tensor {key!r} (config says tie_word_embeddings=false)")
                raise UsageError(f"missing tensor {key!r} in checkpoint")
            arr = get(key)
            arr = arr.T if transpose else arr
            want = shape[1:] if per_layer else shape
            if tuple(arr.shape) != tuple(want):
                stored = tuple(arr.T.shape) if transpose else tuple(arr.shape)
                expect = tuple(want[::-1]) if transpose else tuple(want)
                raise UsageError(f"tensor {key!r} has shape {stored}, config expects {expect}")
            arrays.append(np.asarray(arr, dtype=dtype))
            used.add(key)
        value = jnp.asarray(np.stack(arrays) if per_layer else arrays[0])
        if per_layer:
            params["layers"][ours.split(".", 1)[1]] = value
        else:
            params[ours] = value
    if config.tie_embeddings:
        used.add("lm_head.weight")  # a tied checkpoint may still store a copy
    leftover = sorted(n for n in names - used if n.startswith(prefix) or n == "lm_head.weight")
    leftover = [n for n in leftover if not n.endswith(_IGNORED_SUFFIXES)]
    if prefix != "model.":  # multimodal wrapper: only the text decoder's own tensors are ours
        leftover = [n for n in leftover if n.startswith(prefix)]
    if leftover:
        raise UsageError(
            f"unexpected tensor {leftover[0]!r} in checkpoint ({len(leftover)} unexpected; "
            f"config.json does not match the weights)"
        )
    return params


def model_from_params(config: ModelConfig, params: dict[str, Any]) -> Transformer:
    """A :class:`Transformer` holding ``params`` (no random init is run)."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def load_model(path: str | os.PathLike, dtype: str | None = None) -> Transformer:
    """Reads ``config.json`` + safetensors weights from a local HF directory.

    ``dtype`` ('float32' default, 'bfloat16', 'float16') is the parameter/activation dtype; logits stay
    float32.
    """
    path = Path(path)
    config = read_hf_config(path)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    files = _TensorFiles(path)
    try:
        params = load_params(config, files.get, files.names())
    finally:
        files.close()
    return model_from_params(config, params)


def load_tokenizer(path: str | os.PathLike):
    """``transformers.AutoTokenizer`` for the directory, or None if it holds no tokenizer files."""
    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return None
    import_transformers()  # no PyTorch banner
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # damaged JSON, a truncated file, ...: transformers / tokenizers raise many kinds
        raise UsageError(f"cannot load the tokenizer in {path}: {' '.join(str(e).split())[:300]}") from None


# ------------------------------------------------------------------------------------------------ writing
def iter_hf_tensors(model: Transformer) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array in HF layout) for every parameter of ``model``."""
    config = model.config
    params = model.params()
    for ours, (template, transpose) in hf_names(config).items():
        if ours.startswith("layers."):
            stacked = np.asarray(jax.device_get(params["layers"][ours.split(".", 1)[1]]))
            for i in range(config.num_layers):
                arr = stacked[i].T if transpose else stacked[i]
                yield template.format(i=i), np.ascontiguousarray(arr)
        else:
            arr = np.asarray(jax.device_get(params[ours]))
            yield template, np.ascontiguousarray(arr.T if transpose else arr)


def save_pretrained(
    model: Transformer, tokenizer, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Writes ``config.json``, ``model.safetensors`` (+ tokenizer files) in the transformers layout,
    atomically.

    The directory is built beside ``path`` and moved into place only when complete. An existing ``path`` is
    replaced only with ``overwrite=True`` (else :class:`UsageError`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass overwrite=True to replace it")
    tensors = dict(iter_hf_tensors(model))
    with atomic_directory(path, replace=overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_hf_config(), indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return path
