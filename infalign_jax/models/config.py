"""Model configuration: one frozen dataclass with switches for the Llama / Qwen2 / Gemma 3 decoder families.

The switches (not the family name) drive the implementation in :mod:`infalign_jax.models.transformer`:

============  ==========================  =====================================================
switch        Llama / Qwen2               Gemma 3
============  ==========================  =====================================================
activation    ``silu`` (SwiGLU)           ``gelu_tanh`` (GeGLU)
norm_offset   0 (``x * w``)               1 (``x * (1 + w)``)
qk_norm       False                       True (RMSNorm over head_dim on q and k)
post_norms    False                       True (extra norm after attention and after the MLP)
embed_scale   False                       True (embeddings times sqrt(hidden_size))
query_scale   head_dim ** -0.5            query_pre_attn_scalar ** -0.5
layer_types   all ``full``                interleaved ``sliding`` / ``full`` with their own RoPE bases
qkv_bias      Qwen2: True, Llama: opt.    False
============  ==========================  =====================================================

``ModelConfig.from_hf_config(dict)`` reads a Hugging Face ``config.json`` dict (transformers 4.x and 5.x
spellings) and ``to_hf_config()`` writes one that transformers can load back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import import_transformers

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}
_ARCH_FROM_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
_ROPE_TYPES = ("default", "linear", "llama3")
FULL, SLIDING = "full", "sliding"


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type: base ``theta`` and optional 'linear' / 'llama3' frequency
    scaling."""

    theta: float = 10_000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in _ROPE_TYPES:
            raise UsageError(f"unsupported rope_type {self.rope_type!r}; supported: {', '.join(_ROPE_TYPES)}")

    @classmethod
    def from_hf(cls, params: dict[str, Any] | None, default_theta: float) -> RopeConfig:
        params = dict(params or {})
        rope_type = params.get("rope_type", params.get("type", "default"))
        kw: dict[str, Any] = {"theta": float(params.get("rope_theta", default_theta)), "rope_type": rope_type}
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            if key in params:
                kw[key] = float(params[key])
        if "original_max_position_embeddings" in params:
            kw["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
        if self.rope_type in ("linear", "llama3"):
            out["factor"] = self.factor
        if self.rope_type == "llama3":
            out.update(
                low_freq_factor=self.low_freq_factor,
                high_freq_factor=self.high_freq_factor,
                original_max_position_embeddings=self.original_max_position_embeddings,
            )
        return out


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (hashable: usable as a static jit argument)."""

    arch: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_embeddings: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"
    norm_offset: float = 0.0
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: bool = False
    query_scale: float | None = None  # None: head_dim ** -0.5
    layer_types: tuple[str, ...] = ()  # () means all FULL
    sliding_window: int | None = None
    rope: RopeConfig = field(default_factory=RopeConfig)
    rope_local: RopeConfig | None = None  # RoPE of SLIDING layers (Gemma 3); None: same as ``rope``
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # parameter / activation dtype; logits are always float32

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise UsageError(f"unsupported architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}")
        if self.activation not in ("silu", "gelu_tanh"):
            raise UsageError(f"unsupported activation {self.activation!r}; supported: silu, gelu_tanh")
        if self.num_heads % self.num_kv_heads:
            raise UsageError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise UsageError(f"head_dim={self.head_dim} must be even for RoPE")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise UsageError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if bad := sorted(set(self.layer_types) - {FULL, SLIDING}):
            raise UsageError(f"unknown layer types {bad}; use {FULL!r} or {SLIDING!r}")
        if SLIDING in self.layer_types and not self.sliding_window:
            raise UsageError("sliding layers need sliding_window > 0")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"unsupported dtype {self.dtype!r}; use float32, bfloat16 or float16")

    @property
    def scale(self) -> float:
        return self.query_scale if self.query_scale is not None else self.head_dim**-0.5

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else tuple(self.eos_token_id)

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ presets
    @classmethod
    def llama(cls, **kw) -> ModelConfig:
        return cls(arch="llama", **kw)

    @classmethod
    def qwen2(cls, **kw) -> ModelConfig:
        return cls(arch="qwen2", **{"qkv_bias": True, **kw})

    @classmethod
    def gemma3(cls, sliding_window_pattern: int = 6, **kw) -> ModelConfig:
        n = kw.get("num_layers", cls.num_layers)
        types = tuple(FULL if (i + 1) % sliding_window_pattern == 0 else SLIDING for i in range(n))
        defaults: dict[str, Any] = dict(
            arch="gemma3",
            activation="gelu_tanh",
            norm_offset=1.0,
            qk_norm=True,
            post_norms=True,
            embed_scale=True,
            layer_types=types,
            sliding_window=512,
            rope=RopeConfig(theta=1_000_000.0),
            rope_local=RopeConfig(theta=10_000.0),
            tie_embeddings=True,
        )
        defaults.update(kw)
        if "query_scale" not in kw:
            defaults["query_scale"] = defaults.get("head_dim", cls.head_dim) ** -0.5
        return cls(**defaults)

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Reads a Hugging Face ``config.json`` dict of a Llama / Qwen2 / Gemma 3 (text) causal LM."""
        model_type = cfg.get("model_type")
        if model_type == "gemma3" and "text_config" in cfg:  # multimodal wrapper: use its text part
            cfg = _gemma3_text_config(cfg)
            model_type = "gemma3_text"
        arch = _ARCH_FROM_MODEL_TYPE.get(model_type)
        if arch is None:
            raise UsageError(
                f"unsupported model_type {model_type!r} (architectures {cfg.get('architectures')}); "
                f"supported: {', '.join(sorted(_ARCH_FROM_MODEL_TYPE))}"
            )
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            n_layers = int(cfg["num_hidden_layers"])
            common: dict[str, Any] = dict(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=n_layers,
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_id=cfg.get("eos_token_id"),
                pad_token_id=cfg.get("pad_token_id"),
            )
        except KeyError as e:
            raise UsageError(f"config.json is missing required key {e.args[0]!r}") from None
        default_act = "gelu_pytorch_tanh" if arch == "gemma3" else "silu"
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or default_act
        if act not in _ACTIVATIONS:
            raise UsageError(f"unsupported activation {act!r} in config.json")
        common["activation"] = _ACTIVATIONS[act]
        rope_params = cfg.get("rope_parameters")
        legacy_rope = cfg.get("rope_scaling") or {}
        if arch == "gemma3":
            per_type = (
                rope_params if isinstance(rope_params, dict) and "full_attention" in rope_params else {}
            )
            full = per_type.get("full_attention") or {**legacy_rope, "rope_theta": cfg.get("rope_theta", 1e6)}
            local = per_type.get("sliding_attention") or {"rope_theta": cfg.get("rope_local_base_freq", 1e4)}
            # A per-type dict without a theta takes the top-level one, as transformers does.
            types = _hf_layer_types(cfg, n_layers, default_pattern=int(cfg.get("sliding_window_pattern", 6)))
            if cfg.get("use_bidirectional_attention"):
                raise UsageError(
                    "Gemma 3 with use_bidirectional_attention=True is not supported (decoder only)"
                )
            return cls(
                arch="gemma3",
                **common,
                tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                qkv_bias=bool(cfg.get("attention_bias", False)),
                o_bias=bool(cfg.get("attention_bias", False)),
                norm_offset=1.0,
                qk_norm=True,
                post_norms=True,
                embed_scale=True,
                query_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5,
                layer_types=types,
                sliding_window=cfg.get("sliding_window") if SLIDING in types else None,
                rope=RopeConfig.from_hf(full, float(cfg.get("rope_theta", 1e6))),
                rope_local=RopeConfig.from_hf(local, float(cfg.get("rope_local_base_freq", 1e4))),
                # attn_logit_softcapping is NOT read: transformers' Gemma3Attention ignores it (a Gemma 2
                # leftover), so honouring a non-null value would break parity with it.
                final_logit_softcap=cfg.get("final_logit_softcapping"),
            )
        rope_dict = (
            rope_params if isinstance(rope_params, dict) and "full_attention" not in rope_params else None
        )
        # rope_parameters without a rope_theta take the top-level one, as transformers does (was: 1e4)
        theta = float(cfg.get("rope_theta", 1e4))
        rope = RopeConfig.from_hf(rope_dict or {**legacy_rope, "rope_theta": theta}, theta)
        if arch == "qwen2":
            use_sw = bool(cfg.get("use_sliding_window", False))
            if cfg.get("layer_types"):
                types = _hf_layer_types(cfg, n_layers, default_pattern=0)
            elif use_sw:
                start = int(cfg.get("max_window_layers", n_layers))
                types = tuple(SLIDING if i >= start else FULL for i in range(n_layers))
            else:
                types = (FULL,) * n_layers
            if not use_sw:
                types = (FULL,) * n_layers
            return cls(
                arch="qwen2",
                **common,
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=True,
                layer_types=types,
                sliding_window=cfg.get("sliding_window") if SLIDING in types else None,
                rope=rope,
            )
        return cls(
            arch="llama",
            **common,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", False)),
            o_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            rope=rope,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A ``config.json`` dict that transformers (5.x) loads as the matching ``*ForCausalLM``."""
        if self.attn_logit_softcap:
            raise UsageError(
                "attn_logit_softcap has no Hugging Face equivalent for these architectures (transformers' "
                "Llama, Qwen2 and Gemma 3 do not soft-cap attention logits): cannot export this config"
            )
        act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[self.activation]
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.arch]],
            "model_type": _MODEL_TYPES[self.arch],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.dtype,
        }
        hf_types = ["sliding_attention" if t == SLIDING else "full_attention" for t in self.layer_types]
        if self.arch == "gemma3":
            local = self.rope_local or self.rope
            q_scalar = self.scale**-2
            out.update(
                hidden_activation=act,
                attention_bias=self.qkv_bias,
                query_pre_attn_scalar=int(round(q_scalar))
                if math.isclose(q_scalar, round(q_scalar))
                else q_scalar,
                sliding_window=self.sliding_window or 4096,
                layer_types=hf_types,
                rope_parameters={"full_attention": self.rope.to_hf(), "sliding_attention": local.to_hf()},
                attn_logit_softcapping=None,  # transformers' Gemma 3 ignores it (refused above)
                final_logit_softcapping=self.final_logit_softcap,
            )
        else:
            out.update(hidden_act=act, rope_parameters=self.rope.to_hf())
            if self.arch == "llama":
                out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
            else:
                use_sw = SLIDING in self.layer_types
                out.update(
                    use_sliding_window=use_sw, sliding_window=self.sliding_window, layer_types=hf_types
                )
                if use_sw:
                    out["max_window_layers"] = self.layer_types.index(SLIDING)
        return out


def _gemma3_text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The text part of a multimodal Gemma 3 ``config.json`` as transformers builds it: published wrappers
    list only the keys that differ from ``Gemma3TextConfig``'s defaults (e.g. gemma-3-4b-it: six keys), so
    the defaults come from transformers itself; token ids given at the top level take precedence."""
    import_transformers()  # no PyTorch banner
    from transformers import Gemma3TextConfig

    text = {k: v for k, v in dict(cfg["text_config"] or {}).items() if k != "model_type"}
    try:
        full = Gemma3TextConfig(**text).to_dict()
    except (TypeError, ValueError) as e:
        raise UsageError(f"config.json: invalid Gemma 3 text_config ({e})") from None
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg.get(key) is not None and key not in text:
            full[key] = cfg[key]
    return {**full, "model_type": "gemma3_text"}


def _hf_layer_types(cfg: dict[str, Any], n_layers: int, default_pattern: int) -> tuple[str, ...]:
    names = cfg.get("layer_types")
    if names:
        if len(names) != n_layers:
            raise UsageError(f"config.json layer_types has {len(names)} entries for {n_layers} layers")
        mapping = {"sliding_attention": SLIDING, "full_attention": FULL}
        if bad := sorted(set(names) - set(mapping)):
            raise UsageError(f"unsupported layer types {bad} in config.json")
        return tuple(mapping[n] for n in names)
    if default_pattern <= 0:
        return (FULL,) * n_layers
    return tuple(FULL if (i + 1) % default_pattern == 0 else SLIDING for i in range(n_layers))
