"""A one-line progress bar for terminals: step, loss, tokens/s and ETA."""

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """Redraws one line on ``stream`` (a terminal) after every step."""

    def __init__(self, total_steps: int, stream=None, width: int = 24):
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self.first_step = None

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.first_step is None:
            self.first_step, self.started = step - 1, time.monotonic()
        done = step / self.total
        filled = int(self.width * done)
        elapsed = time.monotonic() - self.started
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {step}/{self.total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s "
                          f"ETA {format_duration(eta)} ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
