"""The reward model's spec: everything that rebuilds its architecture and tokenization (saved as JSON).

A :class:`RewardSpec` names the backbone (``"minilm"`` or ``"decoder"``, :mod:`infalign_jax.reward.nets`),
the features fed to the scalar head, which layers train, the token budgets and the padding buckets. It is
validated on construction (one :class:`~infalign_jax.errors.UsageError` naming the field) and written next to
the checkpoint as :data:`SPEC_FILE` (:mod:`infalign_jax.reward.storage`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from infalign_jax.errors import UsageError

BACKBONES = ("minilm", "decoder")
MINILM_FEATURES = ("pair_mean", "response_mean", "response_alone", "response_len")
SPEC_FILE = "rm_spec.json"
CKPT_DIR = "checkpoint"


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """Everything needed to rebuild a reward model's architecture and tokenization (saved as JSON)."""

    backbone: str = "minilm"
    decoder_path: str = ""  # HF folder of the decoder backbone (backbone="decoder")
    features: tuple[str, ...] = ("pair_mean", "response_mean")
    head_hidden: int = 0  # 0 = linear head; >0 = one hidden GELU layer of this width
    train_layers: int = 0  # encoder layers trained (top ones); 0 = frozen backbone; -1 = all incl. embeddings
    max_prompt_tokens: int = 64
    max_response_tokens: int = 64
    length_buckets: tuple[int, ...] = (16, 32, 64)
    batch_buckets: tuple[int, ...] = (1, 8, 32, 64)
    # Decoder only: tokenize as the CTRL policy does (``<bos>`` + prompt tail | " " + reply + ``<eos>``) so
    # policy samples are scored on their own token ids in the train step (reward/policy_tokens.py).
    policy_tokens: bool = False

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "length_buckets", tuple(sorted(int(b) for b in self.length_buckets)))
        object.__setattr__(self, "batch_buckets", tuple(sorted(int(b) for b in self.batch_buckets)))
        if self.backbone not in BACKBONES:
            raise UsageError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.policy_tokens and self.backbone != "decoder":
            raise UsageError("model.policy_tokens needs backbone='decoder' (the policy's own tokenizer)")
        if self.backbone == "minilm":
            bad = [f for f in self.features if f not in MINILM_FEATURES]
            if not self.features or bad:
                raise UsageError(
                    f"model.features must be a non-empty subset of {MINILM_FEATURES}, got "
                    f"{list(self.features)}"
                )
            if self.max_prompt_tokens + self.max_response_tokens + 3 > 512:
                raise UsageError(
                    "max_prompt_tokens + max_response_tokens + 3 must be <= 512 (BERT positions)"
                )
        elif not self.decoder_path:
            raise UsageError("backbone='decoder' needs model.decoder_path (a local HF model folder)")
        elif self.train_layers not in (0, -1):
            raise UsageError(
                f"backbone='decoder' supports train_layers 0 (head only) or -1 (all), got {self.train_layers}"
            )
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise UsageError("max_prompt_tokens and max_response_tokens must be >= 1")
        if self.head_hidden < 0 or self.train_layers < -1:
            raise UsageError(
                f"head_hidden must be >= 0 and train_layers >= -1, got {self.head_hidden}, "
                f"{self.train_layers}"
            )
        if (
            not self.length_buckets
            or self.length_buckets[0] < 1
            or not self.batch_buckets
            or self.batch_buckets[0] < 1
        ):
            raise UsageError("length_buckets and batch_buckets must be non-empty lists of positive ints")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.policy_tokens:  # specs saved before the field existed hash (weights_digest) as before
            del d["policy_tokens"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RewardSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown reward model spec keys: {sorted(unknown)}")
        return cls(**d)
