"""Loss curves drawn with plain characters, for `cllm plot --terminal`: no matplotlib, any terminal."""

import statistics

MARKS = (("*", "o"), ("+", "x"), ("#", "@"), ("%", "&"), ("=", "~"))  # (train, val) of each run in turn
LABEL = 9  # columns of the y-axis labels


def values(records: list, key: str) -> list:
    """(step, value) of the records that have a number for ``key``."""
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


def draw(runs: list, width: int = 80, height: int = 20) -> str:
    """``runs`` is [(label, step records)]; the chart of their training and validation losses against the step,
    with a legend and one line of figures per run."""
    columns = max(width - LABEL - 2, 10)
    rows = max(height, 5)
    trains = [values(records, "loss") for _, records in runs]
    vals = [values(records, "val_loss") for _, records in runs]
    steps = [step for series in trains + vals for step, _ in series]
    if not steps:
        return "no finite loss to draw\n"
    first, last = min(steps), max(steps)
    span_x = max(last - first, 1)

    def column(step: int) -> int:
        return round((step - first) / span_x * (columns - 1))

    binned = []  # each run's training loss as (column, mean of the steps that fall in it)
    for train in trains:
        bins = {}
        for step, value in train:
            bins.setdefault(column(step), []).append(value)
        binned.append([(c, sum(vs) / len(vs)) for c, vs in bins.items()])
    shown = [v for series in binned for _, v in series] + [v for series in vals for _, v in series]
    low, high = min(shown), max(shown)
    span_y = (high - low) or 1.0

    def row(value: float) -> int:
        return round((high - value) / span_y * (rows - 1))

    grid = [[" "] * columns for _ in range(rows)]
    for train, val, (train_mark, val_mark) in zip(binned, vals, MARKS * len(runs)):
        for c, value in train:
            grid[row(value)][c] = train_mark
        for step, value in val:
            grid[row(value)][column(step)] = val_mark

    labelled = {0: high, rows // 2: high - span_y * (rows // 2) / (rows - 1), rows - 1: low}
    lines = ["loss"]
    for r, cells in enumerate(grid):
        label = f"{labelled[r]:.4g}" if r in labelled else ""
        lines.append(f"{label:>{LABEL}} |" + "".join(cells).rstrip())
    lines.append(" " * LABEL + " +" + "-" * columns)
    ends = f"{first}" + " " * max(columns - len(str(first)) - len(str(last)), 1) + f"{last}"
    lines.append(" " * (LABEL + 2) + ends + "  step")
    for (label, records), (train_mark, val_mark) in zip(runs, MARKS * len(runs)):
        lines.append(f"{train_mark} {val_mark}  {label}: {summary(records)}")
    return "\n".join(lines) + "\n"


def summary(records: list) -> str:
    """Figures of a run: steps, last loss, best validation loss, median tokens/s."""
    parts = [f"{records[-1]['step']} steps"]
    train = values(records, "loss")
    if train:
        parts.append(f"last loss {train[-1][1]:.4f}")
    val = values(records, "val_loss")
    if val:
        parts.append(f"best val loss {min(v for _, v in val):.4f}")
    rates = [v for _, v in values(records, "tokens_per_s")]
    if rates:
        parts.append(f"{statistics.median(rates):,.0f} tokens/s")
    return ", ".join(parts)
