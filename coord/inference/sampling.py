"""Sampling text from a model: temperature, top-k, top-p, streamed as it comes, until the
end-of-text token or a stop string."""

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from cllm.kernels.blas import one_blas_thread
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
    stop: tuple = ()  # strings that end the text where they first appear (not printed)


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


class BlasThreads:
    """Whether a token's step runs on one BLAS thread or on all the process may use, measured as
    generation goes: each step takes the choice whose recent steps were faster, and every PROBE-th
    step tries the other. A second thread pays when its core is free (a token of GPT-2 124M reads
    500 MB of weights, which two cores read faster: 40 against 32 tokens/s here), and costs when
    that core is busy, as the step then waits for it (20 against 30 tokens/s)."""

    PROBE = 8

    def __init__(self):
        self.seconds = {True: None, False: None}  # a running mean of each choice's step, None until tried

    def one_thread(self, i: int) -> bool:
        """Whether the i-th token's step runs on one BLAS thread."""
        if self.seconds[True] is None or self.seconds[False] is None:
            return self.seconds[True] is None
        faster = self.seconds[True] <= self.seconds[False]
        return not faster if i % self.PROBE == self.PROBE - 1 else faster

    def record(self, one: bool, seconds: float) -> None:
        before = self.seconds[one]
        self.seconds[one] = seconds if before is None else 0.5 * (before + seconds)


def generate_ids(w: Tensors, cache: KVCache, prompt: np.ndarray, config: SamplingConfig) -> Iterator[int]:
    """Token ids following ``prompt``; when the context fills, the last half is kept and re-read."""
    rng = np.random.default_rng(config.seed)
    block = cache.cfg.block_size
    context = list(prompt[-block:])
    cache.clear()
    threads = BlasThreads()
    logits = step(w, cache, np.asarray(context, dtype=np.int32), last=True)[-1]
    for i in range(config.max_new_tokens):
        token = choose(logits, config, rng)
        yield token
        context.append(token)
        if cache.length == block:
            context = context[-(block // 2):]
            cache.clear()
            logits = step(w, cache, np.asarray(context, dtype=np.int32), last=True)[-1]
        else:
            one = threads.one_thread(i)
            start = time.perf_counter()
            with one_blas_thread() if one else nullcontext():
                logits = step(w, cache, np.asarray([token], dtype=np.int32), last=True)[-1]
            threads.record(one, time.perf_counter() - start)


def held_back(text: str, stop: tuple) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def stream_text(ids: Iterable[int], tokenizer, stop: tuple = ()) -> Iterator[str]:
    """Pieces of the text of ``ids`` as they come, ending before the end-of-text token or the first
    stop string. A piece is emitted once it decodes to whole characters and cannot be the start
    of a stop string."""
    new, emitted, text = [], "", ""
    for token in ids:
        if token == tokenizer.eos_id:
            break
        new.append(token)
        decoded = tokenizer.decode(new)
        if decoded.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            continue
        text = decoded
        found = [i for i in (text.find(s, max(0, len(emitted) - len(s) + 1)) for s in stop) if i >= 0]
        if found:
            text = text[:min(found)]
            break
        ready = len(text) - held_back(text, stop)
        if ready > len(emitted):
            yield text[len(emitted):ready]
            emitted = text[:ready]
    if len(text) > len(emitted):
        yield text[len(emitted):]


def generate_text(w: Tensors, cache: KVCache, tokenizer, prompt: str, config: SamplingConfig) -> Iterator[str]:
    """The text following ``prompt``, streamed, until end-of-text, a stop string or max_new_tokens."""
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        ids = np.asarray([tokenizer.eos_id], dtype=np.int32)  # start as a new document
    yield from stream_text(generate_ids(w, cache, np.asarray(ids, dtype=np.int32), config), tokenizer, config.stop)
