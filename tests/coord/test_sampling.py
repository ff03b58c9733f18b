"""Sampling: temperature, top-k and top-p behave as defined; generation is reproducible; text ends
at the end-of-text token or a stop string."""

import numpy as np

from cllm.coord.data.tokenizer import BpeTokenizer, CharTokenizer
from cllm.coord.inference.sampling import BlasThreads, SamplingConfig, choose, generate_ids, stream_text
from cllm.kernels.inference import KVCache
from cllm.kernels.model import GPTConfig, ParamLayout, init_params

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.1]))


def frequencies(config, n=20000):
    rng = np.random.default_rng(0)
    counts = np.bincount([choose(LOGITS, config, rng) for _ in range(n)], minlength=4)
    return counts / n


def test_temperature_one_samples_the_softmax():
    np.testing.assert_allclose(frequencies(SamplingConfig(temperature=1.0)), [0.5, 0.25, 0.15, 0.1], atol=0.015)


def test_zero_temperature_and_top_k_one_are_greedy():
    rng = np.random.default_rng(0)
    assert choose(LOGITS, SamplingConfig(temperature=0.0), rng) == 0
    assert all(choose(LOGITS, SamplingConfig(temperature=5.0, top_k=1), rng) == 0 for _ in range(50))


def test_top_k_renormalises_over_the_k_best():
    np.testing.assert_allclose(frequencies(SamplingConfig(temperature=1.0, top_k=2)), [2 / 3, 1 / 3, 0, 0], atol=0.015)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.25 = 0.75 >= 0.7: the nucleus is the first two tokens
    np.testing.assert_allclose(frequencies(SamplingConfig(temperature=1.0, top_p=0.7)), [2 / 3, 1 / 3, 0, 0],
                               atol=0.015)


def test_low_temperature_sharpens():
    assert frequencies(SamplingConfig(temperature=0.3))[0] > 0.85


def test_generation_is_reproducible_and_runs_past_the_context():
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)
    w = ParamLayout(cfg).tensors(init_params(cfg, 0))
    config = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=5)
    prompt = np.array([1, 2, 3], dtype=np.int32)
    first = list(generate_ids(w, KVCache(cfg), prompt, config))
    second = list(generate_ids(w, KVCache(cfg), prompt, config))
    assert first == second and len(first) == 30
    assert all(0 <= t < 20 for t in first)
    assert first != list(generate_ids(w, KVCache(cfg), prompt, SamplingConfig(max_new_tokens=30, temperature=1.0,
                                                                               seed=6)))


def streamed(text_ids, tokenizer, stop=()):
    return list(stream_text(iter(text_ids), tokenizer, stop))


def test_text_ends_at_the_end_of_text_token():
    tokenizer = CharTokenizer.train(["abcdef \n"])
    ids = [*tokenizer.encode("abc de"), tokenizer.eos_id, *tokenizer.encode("fff")]
    assert "".join(streamed(ids, tokenizer)) == "abc de"


def test_text_ends_before_the_first_stop_string_and_never_prints_part_of_it():
    tokenizer = CharTokenizer.train(["ROMEO:JULIET \n.,"])
    ids = tokenizer.encode("ROMEO: I JUL.\nJULIET: O ROMEO")
    pieces = streamed(ids, tokenizer, stop=("\nJULIET:", "\n\n"))
    assert "".join(pieces) == "ROMEO: I JUL."
    assert not any("\n" in piece for piece in pieces)  # "\n" was held back while it could begin "\nJULIET:"
    assert "".join(streamed(ids, tokenizer, stop=("TYBALT",))) == "ROMEO: I JUL.\nJULIET: O ROMEO"
    assert "".join(streamed(ids, tokenizer, stop=("ROMEO",))) == ""


def test_bpe_text_waits_for_whole_characters():
    tokenizer = BpeTokenizer.train(["plain ascii text only"], 300)
    ids = tokenizer.encode("é🚀 ok")
    pieces = streamed(ids, tokenizer, stop=("k",))
    assert "".join(pieces) == "é🚀 o" and not any("\ufffd" in p for p in pieces)


def test_blas_threads_take_the_faster_choice_and_follow_a_change():
    threads, probe = BlasThreads(), BlasThreads.PROBE

    def run(first, n, seconds):
        for i in range(first, first + n):
            one = threads.one_thread(i)
            threads.record(one, seconds[one])
            yield one

    choices = list(run(0, 4 * probe, {True: 2e-3, False: 1e-3}))  # all threads faster: the other core is free
    assert choices[:2] == [True, False]  # each tried once
    assert choices[2:] == [i % probe == probe - 1 for i in range(2, 4 * probe)]  # one thread on every PROBE-th
    choices = list(run(4 * probe, 4 * probe, {True: 1e-3, False: 3e-3}))  # the other core became busy
    assert choices[probe:] == [i % probe != probe - 1 for i in range(5 * probe, 8 * probe)]  # switched over
