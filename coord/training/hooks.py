"""The training loop's hook points: a small public API for code that watches or steers a run.

    hooks = Hooks()
    hooks.on(Hook.WEIGHT_UPDATE, lambda info: print(info["step"], info["loss"]))

A callback receives one dict of the event's fields. Each point fires at the moment its name says:

    EPOCH_START    before the first step of an epoch           epoch, step
    EPOCH_END      after the last step of an epoch             epoch, step
    BATCH_START    a step's batch is about to go to the workers  step, epoch, lr
    BATCH_END      the step is over (applied or skipped)       step, loss, grad_norm, tokens, seconds, applied
    GRADIENT_SYNC  the gradients are reduced at Node Zero      step, loss, grad_norm, tokens
    WEIGHT_UPDATE  the optimizer has changed the weights       step, lr
    EVALUATED      the validation loss of a step is known      step, val_loss, val_accuracy
    CHECKPOINT     a checkpoint is on disk                     step, path, best
    ERROR          a step failed or was skipped                step, error
"""

from collections import defaultdict
from enum import Enum


class Hook(Enum):
    EPOCH_START = "epoch_start"
    EPOCH_END = "epoch_end"
    BATCH_START = "batch_start"
    BATCH_END = "batch_end"
    GRADIENT_SYNC = "gradient_sync"
    WEIGHT_UPDATE = "weight_update"
    EVALUATED = "evaluated"
    CHECKPOINT = "checkpoint"
    ERROR = "error"


class Hooks:
    def __init__(self):
        self.callbacks = defaultdict(list)

    def on(self, hook: Hook, callback) -> None:
        self.callbacks[hook].append(callback)

    def fire(self, hook: Hook, **info) -> None:
        for callback in self.callbacks[hook]:
            callback(info)
