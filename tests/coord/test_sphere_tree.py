"""The sphere hierarchy and the state machines of spheres and Node Zero."""

import pytest

from cllm.coord.nodezero.sphere import FANOUT, build_tree
from cllm.coord.nodezero.states import (CONTROL_TRANSITIONS, SPHERE_TRANSITIONS, ControlState, IllegalTransition,
                               SphereState, StateMachine)


def shape(root):
    spheres = list(root.walk())
    levels = max(s.level for s in spheres) + 1
    return len(spheres), levels


@pytest.mark.parametrize("workers, spheres, levels", [(1, 2, 2), (2, 3, 2), (12, 13, 2), (13, 16, 3), (63, 70, 3),
                                                      (144, 157, 3), (145, 1 + 2 + 13 + 145, 4)])
def test_tree_grows_a_level_for_every_factor_of_twelve(workers, spheres, levels):
    root = build_tree(workers)
    assert shape(root) == (spheres, levels)
    assert len(root.leaves()) == workers
    assert all(len(s.children) <= FANOUT for s in root.walk())


def test_the_original_configuration_has_157_spheres_in_twelve_groups_of_twelve():
    root = build_tree(144)
    assert len(list(root.walk())) == 157
    assert len(root.children) == 12
    assert all(len(group.children) == 12 and all(leaf.is_worker for leaf in group.children) for group in root.children)
    ids = [s.id for s in root.walk()]
    assert sorted(ids) == list(range(157)) and root.id == 0
    assert [leaf.worker_index for leaf in root.leaves()] == list(range(144))


def test_groups_are_balanced():
    root = build_tree(13)
    assert sorted(len(g.children) for g in root.children) == [6, 7]


def walk_all(transitions, initial):
    """Every legal transition, each reached from the initial state by a legal path."""
    paths = {initial: []}
    frontier = [initial]
    while frontier:
        state = frontier.pop()
        for nxt in transitions[state]:
            if nxt not in paths:
                paths[nxt] = paths[state] + [nxt]
                frontier.append(nxt)
    return paths


@pytest.mark.parametrize("transitions, initial", [(SPHERE_TRANSITIONS, SphereState.INITIALIZING),
                                                  (CONTROL_TRANSITIONS, ControlState.INITIALIZING)])
def test_state_machines_walk_every_legal_transition_and_refuse_the_rest(transitions, initial):
    paths = walk_all(transitions, initial)
    assert set(paths) == set(transitions)  # every state is reachable
    for state, path in paths.items():
        for target in type(initial):
            machine = StateMachine(initial, transitions, "test")
            for step in path:
                machine.to(step)
            assert machine.state is state
            if target is state:
                continue
            if target in transitions[state]:
                machine.to(target)
                assert machine.state is target
            else:
                with pytest.raises(IllegalTransition, match=f"{state.name} -> {target.name}"):
                    machine.to(target)
                assert machine.state is state


def test_terminated_and_stopped_are_final():
    assert SPHERE_TRANSITIONS[SphereState.TERMINATED] == set()
    assert CONTROL_TRANSITIONS[ControlState.STOPPED] == set()
