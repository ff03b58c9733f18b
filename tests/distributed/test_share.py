"""Each rank's share of a step's micro-batches and the layer buckets of the gradient, in one process."""

import pytest

from cllm.coord.distributed.ranks import layer_buckets, share
from cllm.coord.nodezero.work import cut
from cllm.kernels.model import GPTConfig, ParamLayout


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shares_are_contiguous_even_and_cover_every_micro_batch(size):
    for count in range(0, 30):
        parts = [share(count, rank, size) for rank in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == count
        assert all(parts[i][1] == parts[i + 1][0] for i in range(size - 1))
        lengths = [b - a for a, b in parts]
        assert max(lengths) - min(lengths) <= 1


def test_two_ranks_split_where_the_pairwise_sum_does():
    assert [share(count, 0, 2)[1] for count in range(2, 9)] == [count // 2 for count in range(2, 9)]


def test_micro_batches_are_contiguous_and_at_most_one_row_apart():
    for rows in range(1, 120):
        for count in range(1, min(rows, 40) + 1):
            cuts = cut(rows, count)
            assert [first for first, _ in cuts] == [sum(size for _, size in cuts[:i]) for i in range(count)]
            sizes = [size for _, size in cuts]
            assert sum(sizes) == rows and max(sizes) - min(sizes) <= 1


def test_two_ranks_cut_their_halves_where_one_process_cuts_the_whole_step():
    """So that their gradients, accumulated over micro-steps too, are one process's bit for bit."""
    for rows in range(2, 120):
        for per_rank in range(1, min(rows // 2, 20) + 1):
            halves = [share(rows, rank, 2) for rank in (0, 1)]
            by_ranks = [(a + first, size) for a, b in halves for first, size in cut(b - a, per_rank)]
            assert by_ranks == cut(rows, 2 * per_rank), (rows, per_rank)


def test_layer_buckets_cover_the_gradient_and_its_words_last_layer_first():
    layout = ParamLayout(GPTConfig(vocab_size=64, block_size=8, n_layer=3, n_head=2, n_embd=16))
    buckets = layer_buckets(layout, tail=6)
    assert len(buckets) == 4
    assert buckets[0] == (layout.offsets["h.2.ln_1.weight"], layout.size + 6)  # last block, ln_f and the words
    assert buckets[-1] == (0, layout.offsets["h.0.ln_1.weight"])  # the embeddings, whose gradient is final last
    tiled = sorted(buckets)
    assert tiled[0][0] == 0 and tiled[-1][1] == layout.size + 6
    assert all(left[1] == right[0] for left, right in zip(tiled, tiled[1:]))
