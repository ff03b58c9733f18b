"""The training cursor: which rows each step trains on, and the boundaries of the token stream it crosses.

A step's batch is a pure function of (seed, step): within an epoch the windows come in an
order drawn from (seed, epoch). Around each batch the cursor names what the stream does, as
notices the training loop acts on (``Trainer.handle``):

    before the step   EPOCH_START (first step of an epoch), BOUNDARY_REGION_ENTER (its last
                      step: the next epoch's order is drawn ahead), BOUNDARY_CROSSING "document"
                      with the positions of the end-of-text separators among the step's tokens,
                      and BOUNDARY_CROSSING "shard" with those of them that end a source file
                      (and the index and name of the file each begins)
    after the step    BOUNDARY_REGION_EXIT and EPOCH_COMPLETE (the epoch's last step)
"""

from dataclasses import dataclass, field

import numpy as np

from cllm.protocol import payloads as pl
from cllm.protocol.messages import Message, MessageType as M, NODE_ZERO, make


@dataclass
class Batch:
    step: int  # from 1
    epoch: int  # from 0
    tokens: np.ndarray  # (B,T) int32
    targets: np.ndarray  # (B,T) int32, tokens shifted by one
    before: list = field(default_factory=list)  # notices for the boundary before the step
    after: list = field(default_factory=list)  # and after it


def notice(kind: M, payload) -> Message:
    return make(kind, NODE_ZERO, NODE_ZERO, payload)


class Cursor:
    def __init__(self, dataset, rows: int, seq_len: int, seed: int):
        self.dataset, self.rows, self.seq_len, self.seed = dataset, rows, seq_len, seed
        self.per_epoch = dataset.steps_per_epoch(rows, seq_len)
        self.eos = dataset.tokenizer.eos_id

    def batch(self, step: int) -> Batch:
        epoch, index = divmod(step - 1, self.per_epoch)
        starts = self.dataset.train_windows(step - 1, self.rows, self.seq_len, self.seed)
        tokens, targets = self.dataset.gather(self.dataset.train, starts, self.seq_len)
        position = index * self.rows * self.seq_len  # the step's first token in its epoch's order
        batch = Batch(step, epoch, tokens, targets)
        if index == 0:
            batch.before.append(notice(M.EPOCH_START, pl.EpochMark(epoch=epoch, step=step)))
        if index == self.per_epoch - 1:
            region = pl.Region(step=step, position=position, kind="epoch_end")
            batch.before.append(notice(M.BOUNDARY_REGION_ENTER, region))
            batch.after.append(notice(M.BOUNDARY_REGION_EXIT, region))
            batch.after.append(notice(M.EPOCH_COMPLETE, pl.EpochMark(epoch=epoch, step=step)))
        separators = np.flatnonzero(tokens.reshape(-1) == self.eos)
        if len(separators):
            batch.before.append(notice(M.BOUNDARY_CROSSING, pl.BoundaryCrossing(
                step=step, kind="document", positions=separators.tolist(), shards=[], names=[])))
        positions, shards = self.dataset.files_crossed(starts, self.seq_len)
        if positions:
            names = [self.dataset.shards.names[shard] for shard in shards]
            batch.before.append(notice(M.BOUNDARY_CROSSING, pl.BoundaryCrossing(
                step=step, kind="shard", positions=positions, shards=shards, names=names)))
        return batch

    def batch_epoch(self, step: int) -> int:
        return (step - 1) // self.per_epoch

    def prepare(self, epoch: int) -> None:
        """Draw ``epoch``'s window order ahead of its first step."""
        self.dataset.window_order(self.seed, epoch, self.seq_len)

    def forget(self, epoch: int) -> None:
        self.dataset.forget_order(self.seed, epoch, self.seq_len)
