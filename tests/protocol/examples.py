"""One realistic payload of every class, and a message of every type built from them."""

from cllm.protocol import payloads as p
from cllm.protocol.messages import MessageType, make

GRADS = p.BufferRef("segments", offset=124_439_808, length=124_439_808)
TOKENS = p.BufferRef("tokens", offset=4_096, length=4_096)
TARGETS = p.BufferRef("targets", offset=4_096, length=4_096)
WEIGHTS = p.BufferRef("params", offset=0, length=124_439_808, dtype="float64")

PAYLOADS = {
    p.WorkRequest: p.WorkRequest(round=14, capacity=1),
    p.WorkOffer: p.WorkOffer(round=14, micro_batch=3, tokens=TOKENS, targets=TARGETS, grad_segment=GRADS,
                             dloss=1 / 32_768),
    p.WorkReply: p.WorkReply(round=14, micro_batch=3, worker=5, reason="round 14 is over"),
    p.GradientSum: p.GradientSum(round=14, first=4, last=7, tokens=4096, loss_sum=13_245.5, busy_s=0.75,
                                 result=GRADS),
    p.GradientComplete: p.GradientComplete(step=12, tokens=49_152, loss=3.25, grad_norm=1.0625),
    p.WeightsUpdated: p.WeightsUpdated(step=12, lr=6e-4, weights=WEIGHTS),
    p.WeightsRequest: p.WeightsRequest(step=12),
    p.WeightsBroadcast: p.WeightsBroadcast(step=12, weights=WEIGHTS),
    p.BoundaryCrossing: p.BoundaryCrossing(step=12, kind="shard", positions=[17, 1_024, 3_000], shards=[4, 5, 6],
                                           names=["books/emma.txt", "books/persuasion.txt", "plays/lear.txt"]),
    p.IntervalHit: p.IntervalHit(step=250, kind="checkpoint"),
    p.Region: p.Region(step=12, position=9_000_000, kind="epoch_end"),
    p.EpochMark: p.EpochMark(epoch=1, step=2_000),
    p.BatchStart: p.BatchStart(step=12, round=14, kind="train", micro_batches=8, seq_len=1024),
    p.BatchComplete: p.BatchComplete(round=15, micro_batch=3, tokens=512, loss_sum=1.5, busy_s=0.75, hits=97),
    p.ChildCount: p.ChildCount(count=8),
    p.ParentSync: p.ParentSync(step=12, parent=1),
    p.SiblingDiscover: p.SiblingDiscover(group=1, siblings=[2, 3, 4]),
    p.ErrorReport: p.ErrorReport(step=12, round=14, sphere=4, error_type="FloatingPointError", message="loss is nan"),
    p.ErrorRecovery: p.ErrorRecovery(step=12, round=14, action="retry"),
    p.StatsRequest: p.StatsRequest(),
    p.StatsReport: p.StatsReport(sphere=0, group=0, batches=24, tokens=98_304, busy_s=1.5, waiting_s=0.25, children=[
        p.StatsReport(sphere=1, group=0, batches=12, tokens=49_152, busy_s=9.0, waiting_s=0.5, children=[]),
        p.StatsReport(sphere=2, group=1, batches=12, tokens=49_152, busy_s=8.75, waiting_s=0.625, children=[]),
    ]),
    p.ShutdownRequest: p.ShutdownRequest(reason="ctl stop", after_step=True),
    p.ShutdownAck: p.ShutdownAck(sphere=4),
}


def message_of_every_type():
    return [make(mtype, 0, 3, PAYLOADS[mtype.payload]) for mtype in MessageType]
