"""Sampling text from a model: temperature, top-k, top-p, streamed as it comes."""

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cllm.kernels.inference import KVCache, step
from cllm.kernels.model import Tensors

from ..errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int = 0


def choose(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> int:
    """One token id from logits (V,) under temperature, top-k and top-p (nucleus)."""
    logits = logits.astype(np.float64)
    if config.temperature == 0:
        return int(np.argmax(logits))
    logits = logits / config.temperature
    order = np.argsort(-logits, kind="stable")
    if config.top_k:
        order = order[:config.top_k]
    probs = np.exp(logits[order] - logits[order[0]])
    probs /= probs.sum()
    if config.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), config.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def generate_ids(w: Tensors, cache: KVCache, prompt: np.ndarray, config: SamplingConfig) -> Iterator[int]:
    """Token ids following ``prompt``; when the context fills, the last half is kept and re-read."""
    rng = np.random.default_rng(config.seed)
    block = cache.cfg.block_size
    context = list(prompt[-block:])
    cache.clear()
    logits = step(w, cache, np.asarray(context, dtype=np.int32))[-1]
    for _ in range(config.max_new_tokens):
        token = choose(logits, config, rng)
        yield token
        context.append(token)
        if cache.length == block:
            context = context[-(block // 2):]
            cache.clear()
            logits = step(w, cache, np.asarray(context, dtype=np.int32))[-1]
        else:
            logits = step(w, cache, np.asarray([token], dtype=np.int32))[-1]


def generate_text(w: Tensors, cache: KVCache, tokenizer, prompt: str, config: SamplingConfig) -> Iterator[str]:
    """Pieces of text as tokens come; a piece is emitted once it decodes to whole characters."""
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        if tokenizer.eos_id is None:
            raise UserError("the prompt is empty and this tokenizer has no end-of-text token to start from; "
                            "give --prompt some text")
        ids = np.asarray([tokenizer.eos_id], dtype=np.int32)
    new, emitted = [], ""
    for token in generate_ids(w, cache, np.asarray(ids, dtype=np.int32), config):
        if token == tokenizer.eos_id:
            break
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            continue
        yield text[len(emitted):]
        emitted = text
