"""How `cllm ctl` shows the daemon's replies to a person: status as aligned lines, statistics as
the tree of ranks, groups and workers, jobs as a table."""

import json

LABELS = {"tokens_per_s": "tokens/s", "best_val_loss": "best val loss"}


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"


def aligned(pairs: list) -> str:
    """(label, text) pairs as lines with the texts in one column."""
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in pairs)


def show_status(status: dict) -> str:
    rest = dict(status)
    pairs = [("state", rest.pop("state", "-"))]
    if "job" in rest:
        pairs.append(("job", rest.pop("job") or "-"))
    if "step" in rest:
        step, steps = rest.pop("step"), rest.pop("steps", None)
        pairs.append(("step", f"{step:,} of {steps:,}" if steps else f"{step:,}"))
    for key, value in rest.items():
        pairs.append((LABELS.get(key, key.replace("_", " ")), number(value)))
    return aligned(pairs)


def shares(node: dict) -> str:
    """Busy and waiting as shares of the time the sphere (or rank) accounted for."""
    busy, waiting = node.get("busy_s", 0.0), node.get("waiting_s", 0.0)
    total = busy + waiting
    if total <= 0:
        return "busy      -  waiting      -"
    return f"busy {100 * busy / total:5.1f}%  waiting {100 * waiting / total:5.1f}%"


def name_of(node: dict, top: bool) -> str:
    if "ranks" in node:
        return f"{node['ranks']} ranks"
    if "rank" in node:
        return f"rank {node['rank']}"
    if top:
        return "node zero"
    if node.get("children"):  # a group by its symmetry group number (0-11 within its parent), then its sphere id
        return f"group {node['group']} (sphere {node['sphere']})"
    return f"worker {node['sphere']} (group {node['group']})"


def show_stats(stats: dict) -> str:
    """The statistics tree, one line per node: its name (a sphere's id and symmetry group), batches, tokens,
    busy and waiting shares."""
    rows = []

    def walk(node: dict, prefix: str, branch: str, top: bool):
        rows.append((prefix + branch + name_of(node, top), node))
        children = node.get("children", [])
        below = prefix + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for i, child in enumerate(children):
            walk(child, below, "└─ " if i == len(children) - 1 else "├─ ", False)

    walk(stats, "", "", True)
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, node in rows:
        extra = f"  communication {node['communication_s']:.1f}s" if "communication_s" in node else ""
        lines.append(f"{name:<{width}}  batches {node.get('batches', 0):>8,}  tokens {node.get('tokens', 0):>12,}  "
                     f"{shares(node)}{extra}")
    return "\n".join(lines)


def show_jobs(jobs: list) -> str:
    """The queue as a table: id, status, submission time, the settings it changes, detail."""
    header = ("ID", "STATUS", "SUBMITTED", "CHANGES", "DETAIL")
    rows = [header]
    for job in jobs:
        changes = " ".join(f"{table}.{key}={json.dumps(value)}" for table, keys in job.get("overrides", {}).items()
                           if isinstance(keys, dict) for key, value in keys.items())
        rows.append((job["id"], job["status"], job["submitted"], changes or "-", job.get("detail") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def show_reload(result: dict) -> str:
    changed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in result["changed"].items())
    pairs = [("changed", changed or "nothing"), ("needs restart", ", ".join(result["needs_restart"]) or "-")]
    if result["step"] is not None:
        pairs.append(("in force from step", f"{result['step']:,}"))
    return aligned(pairs)


def show(command: str, result) -> str:
    """The reply to ``command`` as a person reads it."""
    if command == "reload":
        return show_reload(result)
    if command == "status":
        return show_status(result)
    if command == "stats":
        return show_stats(result)
    if command == "jobs":
        return show_jobs(result)
    return aligned([(key.replace("_", " "), ", ".join(value) or "-" if isinstance(value, list) else number(value))
                    for key, value in result.items()])
