"""HH record encoders: a record → unpadded numpy fields (the ``encode`` of a
:class:`~infalign_jax.data.loader.Loader`).

:func:`sft_encoder` gives the chosen dialogue's tokens and a loss mask on Assistant turns (SFT of the policy
π_ref; InfAlign, Sec. 5); :func:`prompt_encoder` the left-truncated prompt tokens, for sampling. Both work
on character offsets of the HH text (:func:`infalign_jax.data.hh_text.turn_spans`), with a ``tokenizers``
tokenizer or a transformers fast tokenizer wrapping one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from infalign_jax.data.hh_text import turn_spans
from infalign_jax.errors import UsageError


def _backend(tokenizer):
    """The ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every Assistant turn's text: after a ``"\\n\\nAssistant:"`` up to
    the next role marker (``"\\n\\nHuman:"`` or another ``"\\n\\nAssistant:"``) or the end, so no marker
    lies inside a span (:func:`~infalign_jax.data.hh_text.turn_spans`)."""
    return [(a, b) for role, a, b in turn_spans(text) if role == "Assistant"]


_CHARS_PER_TOKEN = 12


def sft_encoder(tokenizer, max_len: int = 128, max_prompt_len: int = 64, bos_id: int = 1, eos_id: int = 2):
    """Record -> ``{"tokens": int32[T], "loss_mask": int32[T]}`` for the chosen dialogue, ``T <= max_len``.

    ``tokens = [bos] + prompt_tail + reply + [eos]``: the prompt (with its earlier turns) is truncated from
    the left to at most ``max_prompt_len`` tokens including ``<bos>``, then the final reply (and ``<eos>``)
    from the right to fit ``max_len``. ``loss_mask[t] = 1`` where token ``t`` is a prediction target: tokens
    inside any Assistant turn (by character offsets) and the closing ``<eos>``; never ``<bos>``, Human turns
    or role markers.
    """
    tok = _backend(tokenizer)
    if max_prompt_len < 2 or max_len <= max_prompt_len:
        raise UsageError(f"need 2 <= max_prompt_len < max_len, got {max_prompt_len}, {max_len}")

    def encode(rec: Mapping) -> dict[str, np.ndarray]:
        full_prompt, reply = rec["prompt"], rec["chosen"][: _CHARS_PER_TOKEN * max_len]
        ends = len(reply) == len(rec["chosen"])  # else the reply is cut: no <eos> target after it
        # Only the prompt's tail and the reply's head can survive truncation: tokenize just those characters
        # (a token is rarely > _CHARS_PER_TOKEN chars); a prompt cut mid-word drops its first, partial token
        # below.
        shift = max(0, len(full_prompt) - _CHARS_PER_TOKEN * max_prompt_len)
        prompt = full_prompt[shift:]
        enc = tok.encode(f"{prompt} {reply}", add_special_tokens=False)
        ids, offsets = np.asarray(enc.ids, np.int32), enc.offsets
        starts = np.array([o[0] for o in offsets], np.int64)
        if shift:
            ids, starts = ids[1:], starts[1:]
        in_asst = np.zeros(len(ids), bool)
        for a, b in assistant_spans(f"{full_prompt} {reply}"):  # spans of the uncut text, shifted
            in_asst |= (starts >= a - shift) & (starts < b - shift)
        n_prompt = int(np.searchsorted(starts, len(prompt)))  # tokens starting inside the prompt
        keep_p = min(n_prompt, max_prompt_len - 1)
        p_ids, p_mask = ids[n_prompt - keep_p : n_prompt], in_asst[n_prompt - keep_p : n_prompt]
        r_ids = np.concatenate([ids[n_prompt:], [eos_id] if ends else []]).astype(np.int32)
        r_mask = np.concatenate([in_asst[n_prompt:], [True] if ends else []]).astype(bool)
        room = max_len - 1 - keep_p
        tokens = np.concatenate([[bos_id], p_ids, r_ids[:room]]).astype(np.int32)
        mask = np.concatenate([[False], p_mask, r_mask[:room]]).astype(np.int32)
        return {"tokens": tokens, "loss_mask": mask}

    return encode


def prompt_encoder(tokenizer, max_prompt_len: int = 64, bos_id: int = 1):
    """Record -> ``{"prompt_tokens": int32[T], "id": int64}``: ``<bos>`` + the prompt's last ``max_prompt_len
    - 1`` tokens (left truncation keeps the final ``"\\n\\nAssistant:"``). Use with
    ``left_pad=("prompt_tokens",)``."""
    tok = _backend(tokenizer)

    def encode(rec: Mapping) -> dict[str, np.ndarray]:
        prompt = rec["prompt"]
        shift = max(0, len(prompt) - _CHARS_PER_TOKEN * max_prompt_len)
        ids = tok.encode(prompt[shift:], add_special_tokens=False).ids[1 if shift else 0 :]
        ids = ids[len(ids) - min(len(ids), max_prompt_len - 1) :]
        return {"prompt_tokens": np.asarray([bos_id, *ids], np.int32), "id": np.int64(rec["id"])}

    return encode
