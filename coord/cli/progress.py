"""The progress bar of `cllm train` on a terminal, and the stream that prints log lines above it.

The bar is tqdm's: percentage, steps, elapsed time, the time left from the smoothed rate of steps,
the rate, the last loss and tokens/s. It takes the bottom line of the terminal; a log line is
printed above it (the bar is cleared, the line written, the bar drawn again), and closing the bar
clears its line, so nothing of it stays behind on exit or after a stop on SIGINT.
"""

import sys

from tqdm import tqdm

SMOOTHING = 0.1  # weight of the latest step in the moving average of the rate


class ProgressBar:
    """One bar on ``stream`` (a terminal), from the step the run starts at to ``total_steps``."""

    def __init__(self, total_steps: int, stream=None):
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.bar = None  # drawn from the first step on, when the step the run starts at is known

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=step - 1, file=self.stream, unit="step", leave=False,
                            dynamic_ncols=True, smoothing=SMOOTHING)
        self.bar.set_postfix_str(f"loss {loss:.4f}, {tokens_per_s:,.0f} tokens/s", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class AboveBar:
    """A text stream for the log that writes each whole line above any progress bar on the terminal."""

    def __init__(self, stream):
        self.stream = stream
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()
