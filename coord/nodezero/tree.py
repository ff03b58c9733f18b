"""The plan of the sphere tree: Node Zero at the root, symmetry groups, workers at the leaves.

Every parent has at most 12 children, numbered 0-11 within it: that number is the child's
symmetry group. With up to 12 workers they hang from Node Zero directly; past that a level
of groups appears (1 + 12 + 144 = 157 spheres for 144 workers, the original configuration),
and another for every further factor of 12. Groups of a level are balanced: their sizes
differ by at most one, larger groups first (13 workers: groups of 7 and 6).

The thread pool has one thread per worker, so every worker can compute at once: a whole
number of groups whenever the workers divide evenly into them (24 = 2 x 12, 144 = 12 x 12).
The groups' and Node Zero's sums and the optimizer's slices run on the same threads; there
are never more of those at once than usable cores (``slices``).
"""

import os
from dataclasses import dataclass, field

FANOUT = 12


@dataclass(eq=False)
class TreeNode:
    id: int  # breadth first; Node Zero is 0
    level: int
    group: int  # position among the parent's children, 0-11 (0 for the root)
    children: list = field(default_factory=list)
    worker: int = -1  # position among the leaves, -1 for Node Zero and the groups

    @property
    def is_worker(self) -> bool:
        return not self.children and self.level > 0

    def leaves(self) -> list:
        if self.is_worker:
            return [self]
        return [leaf for child in self.children for leaf in child.leaves()]

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def group_sizes(n: int, parts: int) -> list:
    """``n`` items over ``parts`` groups as evenly as possible, larger groups first."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan_tree(n_workers: int) -> TreeNode:
    """Node Zero over ``n_workers`` leaves, each parent with at most FANOUT children."""
    if n_workers < 1:
        raise ValueError("a sphere tree needs at least one worker")
    depth = 1
    while FANOUT ** depth < n_workers:
        depth += 1
    root = TreeNode(id=0, level=0, group=0)

    def grow(parent: TreeNode, n: int, levels_left: int) -> None:
        if levels_left == 1:
            parent.children = [TreeNode(-1, parent.level + 1, g) for g in range(n)]
            return
        per_child = FANOUT ** (levels_left - 1)
        for g, size in enumerate(group_sizes(n, -(-n // per_child))):
            child = TreeNode(-1, parent.level + 1, g)
            parent.children.append(child)
            grow(child, size, levels_left - 1)

    grow(root, n_workers, depth)
    queue, next_id = [root], 0
    while queue:
        node = queue.pop(0)
        node.id, next_id = next_id, next_id + 1
        queue.extend(node.children)
    for index, leaf in enumerate(root.leaves()):
        leaf.worker = index
    return root


def routes(root: TreeNode) -> dict:
    """For every sphere: {descendant id: the child whose subtree holds it} (how a message goes down)."""
    table = {}
    for node in root.walk():
        table[node.id] = {d.id: child.id for child in node.children for d in child.walk()}
    return table


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pool_threads(root: TreeNode) -> int:
    """One thread per worker (see the module's docstring)."""
    return len(root.leaves())


def slices(root: TreeNode) -> int:
    """How many parameter slices a sum or the optimizer's update is cut into: no more than the cores."""
    return min(usable_cores(), len(root.leaves()))
