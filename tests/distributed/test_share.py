"""Each rank's share of a step's micro-batches and the layer buckets of the gradient, in one process."""

import pytest

from cllm.coord.distributed.ranks import layer_buckets, share
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


def test_layer_buckets_cover_the_gradient_and_its_words_last_layer_first():
    layout = ParamLayout(GPTConfig(vocab_size=64, block_size=8, n_layer=3, n_head=2, n_embd=16))
    buckets = layer_buckets(layout, tail=6)
    assert len(buckets) == 4
    assert buckets[0] == (layout.offsets["h.2.ln_1.weight"], layout.size + 6)  # last block, ln_f and the words
    assert buckets[-1] == (0, layout.offsets["h.0.ln_1.weight"])  # the embeddings, whose gradient is final last
    tiled = sorted(buckets)
    assert tiled[0][0] == 0 and tiled[-1][1] == layout.size + 6
    assert all(left[1] == right[0] for left, right in zip(tiled, tiled[1:]))
