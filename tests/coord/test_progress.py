"""The progress bar as a person sees it: `cllm train` on a pseudo-terminal, read back through a small terminal model."""

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time

from .runs import TINY_MODEL, command, small_corpus

COLUMNS = 250  # wide enough that no log line wraps
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[(info|warning) *\] \w+")
BAR = re.compile(r"^ *\d+%\|.*\| *\d+/2000 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s, loss \d+\.\d{4}, [\d,]+ tokens/s\]")


class Terminal:
    """Enough of a terminal for tqdm and log lines: characters, carriage return, line feed, CSI cursor up and
    erase. ``finished`` holds each line as it stood when the cursor left it by a line feed; ``drawn`` each
    state of the current line just before a carriage return overwrote it."""

    def __init__(self):
        self.screen, self.row, self.col = [[]], 0, 0
        self.finished, self.drawn = [], []

    def line(self) -> str:
        return "".join(self.screen[self.row]).rstrip()

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                match = re.match(r"\x1b\[(\d*)([A-Za-z])", text[i:])
                count, code = int(match.group(1) or 1), match.group(2)
                if code == "A":
                    self.row = max(self.row - count, 0)
                elif code == "K":
                    del self.screen[self.row][self.col:]
                i += match.end()
                continue
            if ch == "\r":
                self.drawn.append(self.line())
                self.col = 0
            elif ch == "\n":
                self.finished.append(self.line())
                self.row += 1
                if self.row == len(self.screen):
                    self.screen.append([])
            else:
                cells = self.screen[self.row]
                cells.extend(" " * (self.col + 1 - len(cells)))
                cells[self.col] = ch
                self.col += 1
            i += 1

    def lines(self) -> list:
        return ["".join(cells).rstrip() for cells in self.screen]


def read_some(fd: int, seconds: float) -> str:
    ready, _, _ = select.select([fd], [], [], seconds)
    if not ready:
        return ""
    try:
        return os.read(fd, 65536).decode("utf-8", "replace")
    except OSError:  # EIO: the process has gone and closed the terminal
        return None


def test_log_lines_print_above_the_bar_which_goes_on_sigint(tmp_path):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    process = subprocess.Popen(command("train", small_corpus(tmp_path), *TINY_MODEL, "--steps", "2000", "--threads", "2",
                                       "--eval-interval", "20", "--checkpoint-interval", "0", "--checkpoint-dir",
                                       tmp_path / "run", "--cache-dir", tmp_path / "cache"),
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    terminal, output, interrupted = Terminal(), "", False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            chunk = read_some(master, 1.0)
            if chunk is None:
                break
            output += chunk
            terminal.feed(chunk)
            if not interrupted and sum(bool(BAR.match(s)) for s in terminal.drawn) >= 3 \
                    and output.count("] eval ") >= 2:
                process.send_signal(signal.SIGINT)
                interrupted = True
        assert process.wait(timeout=60) == 0, output[-2000:]
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    assert interrupted, output[-2000:]

    bars = [i for i, s in enumerate(terminal.drawn) if BAR.match(s)]
    assert bars, "no progress bar was drawn"
    # every line the cursor left is a whole log line: the bar never shares one, nor is cut by one; then
    # the commands to try next
    *logged, sample, plot = terminal.finished
    assert all(LOG_LINE.match(line) or line == "" for line in logged), \
        [line for line in logged if not LOG_LINE.match(line)][:3]
    assert sample.startswith("Sample from it: cllm generate ") and plot.startswith("Plot its loss:  cllm plot ")
    evals = [line for line in logged if "] eval " in line]
    assert len(evals) >= 2 and all(re.search(r"step=\d+ (val_accuracy=[\d.]+ )?val_loss=[\d.]+ val_perplexity", e) for e in evals)
    assert any("stopped=SIGINT" in line for line in logged[-3:])
    # the bar went away: nothing of it is left on the screen
    assert not [line for line in terminal.lines() if "step/s" in line or "%|" in line]
    # the ETA came from a measured rate: never 00:00 while steps remained, and the percentage matched the step
    for state in (terminal.drawn[i] for i in bars):
        step = int(re.search(r"(\d+)/2000", state).group(1))
        assert abs(int(state.split("%")[0]) - step * 100 / 2000) <= 0.5
        assert "<00:00," not in state
