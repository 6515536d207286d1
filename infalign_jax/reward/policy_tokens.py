"""Policy-token reward models: a decoder reward model that reads the policy's OWN tokens (issue 16, Sec. 4).

A reward model with ``RewardSpec.policy_tokens = True`` (``backbone="decoder"``, the decoder usually the SFT
policy export itself, so its tokenizer IS the policy's) tokenizes text exactly as the CTRL policy sees and
produces it, so its score of a policy sample can be computed on the sampled token ids inside the jitted train
step, with no decode / re-tokenize host callback (:class:`infalign_jax.ctrl.token_scorer.TokenRewardScorer`):

- prompt: ``<bos>`` + the prompt's last ``max_prompt_tokens - 1`` tokens, by the policy's own prompt encoder
  (:func:`infalign_jax.data.encoders.prompt_encoder`, left truncation keeps the final ``"Assistant:"``);
- response: the tokens of ``" " + reply.strip()`` followed by ``<eos>``, then the first
  ``max_response_tokens`` of them — what SFT trained the policy to produce after a prompt
  (:func:`~infalign_jax.data.encoders.sft_encoder` joins ``f"{prompt} {reply}"`` and ends a complete reply
  with ``<eos>``), so a sampled response ``[y_1 .. y_n, <eos>]`` is scored as the same ids. A reply longer
  than the budget loses its ``<eos>``, like a policy sample cut at ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence

from infalign_jax.errors import UsageError


def special_ids(decoder_config, tokenizer) -> tuple[int, int]:
    """(bos, eos) of a decoder and its tokenizer, resolved as the CTRL trainer resolves the policy's
    (``ctrl.hh.load_components``): the model config first, else the tokenizer."""
    bos = decoder_config.bos_token_id if decoder_config.bos_token_id is not None else tokenizer.bos_token_id
    eos_ids = decoder_config.eos_token_ids or (
        (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    )
    if bos is None or not eos_ids:
        raise UsageError("a policy-token reward model needs a decoder with <bos> and <eos> tokens")
    return int(bos), int(eos_ids[0])


class PolicyTokenizer:
    """Text pairs -> policy-token id lists in the CTRL policy's layout (module docstring)."""

    def __init__(self, tokenizer, bos_id: int, eos_id: int, max_prompt_tokens: int, max_response_tokens: int):
        from infalign_jax.data.encoders import _backend, prompt_encoder

        self.tokenizer = tokenizer
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.max_response_tokens = int(max_response_tokens)
        self._prompt = prompt_encoder(tokenizer, int(max_prompt_tokens), bos_id=self.bos_id)
        self._backend = _backend(tokenizer)

    def prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self._prompt({"prompt": p, "id": 0})["prompt_tokens"].tolist() for p in prompts]

    def responses(self, responses: Sequence[str]) -> list[list[int]]:
        if not responses:
            return []
        enc = self._backend.encode_batch([" " + r.strip() for r in responses], add_special_tokens=False)
        return [(e.ids + [self.eos_id])[: self.max_response_tokens] for e in enc]


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    """True when two tokenizers map every token string to the same id (same vocabulary and ids)."""
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
