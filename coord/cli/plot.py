"""`cllm plot`: the loss curves of one or several runs from their metrics.jsonl, as a PNG or in the terminal."""

import os
import shutil
import sys
from pathlib import Path

from ..errors import UserError
from . import chart

INSTALL = "pip install 'cllm[plot]'"
SMOOTH_FROM = 50  # runs longer than this get a moving average over the raw loss


def add_parser(commands) -> None:
    p = commands.add_parser("plot", help="loss and validation loss against the step, of one run or several")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run directory (or its metrics.jsonl)")
    p.add_argument("-o", "--output", type=Path, default=Path("loss.png"), metavar="FILE.png",
                   help="the PNG to write (default: %(default)s)")
    p.add_argument("--terminal", action="store_true",
                   help="draw the curves in the terminal with plain characters instead (no matplotlib needed)")
    p.set_defaults(run=run)


def labels(paths: list) -> list:
    """Each run's name in the legend: its directory's name, or the whole path where two names agree."""
    names = [p.name if p.is_dir() else p.parent.name for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def run(args) -> int:
    from ..training.history import read_history

    runs = []
    for path, label in zip(args.runs, labels(args.runs)):
        records, warning = read_history(path)
        if warning:
            print(f"cllm: warning: {warning}", file=sys.stderr)
        runs.append((label, records))
    if args.terminal:
        size = shutil.get_terminal_size((80, 24))
        sys.stdout.write(chart.draw(runs, width=size.columns, height=max(size.lines - 6 - len(runs), 10)))
        return 0
    write_png(runs, args.output)
    print(f"wrote {args.output}")
    return 0


def moving_average(values: list, window: int) -> list:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_png(runs: list, output: Path) -> None:
    """Two panels sharing the step axis: losses above (raw, smoothed, validation), tokens/s below."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(f"cllm plot needs matplotlib for a PNG: {INSTALL}, or draw in the terminal with "
                        "cllm plot --terminal") from None
    if output.suffix.lower() != ".png":
        raise UserError(f"{output}: cllm plot writes PNG files; give a name ending in .png")
    figure = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    losses, speed = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for index, (label, records) in enumerate(runs):
        color = f"C{index}"
        train = chart.values(records, "loss")
        val = chart.values(records, "val_loss")
        rate = chart.values(records, "tokens_per_s")
        if train:
            steps, loss = zip(*train)
            if len(train) > SMOOTH_FROM:
                losses.plot(steps, loss, color=color, alpha=0.25, linewidth=0.8)
                loss = moving_average(list(loss), max(len(train) // 100, 5))
            losses.plot(steps, loss, color=color, linewidth=1.5, label=f"{label} loss")
        if val:
            losses.plot(*zip(*val), color=color, linestyle="--", marker="o", markersize=4, label=f"{label} val loss")
        if rate:
            speed.plot(*zip(*rate), color=color, linewidth=1.0, label=label)
    losses.set_ylabel("loss")
    losses.grid(alpha=0.3)
    losses.legend()
    losses.set_title("training and validation loss")
    speed.set_ylabel("tokens/s")
    speed.set_xlabel("step")
    speed.grid(alpha=0.3)
    scratch = output.with_name(f".{output.name}.{os.getpid()}")  # renamed into place whole, never half-written
    try:
        FigureCanvasAgg(figure).print_png(str(scratch))
        os.replace(scratch, output)
    except OSError as error:
        scratch.unlink(missing_ok=True)
        raise UserError(f"{output} cannot be written ({error.strerror or error}); give another -o") from None
