"""The plan of the sphere tree and the state machines of spheres and Node Zero."""

import pytest

from cllm.coord.nodezero.tree import FANOUT, plan_tree as build_tree, pool_threads, routes
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
    assert [leaf.worker for leaf in root.leaves()] == list(range(144))


@pytest.mark.parametrize("workers", [13, 25, 100, 145, 1024])
def test_groups_are_numbered_0_to_11_within_their_parent_and_balanced(workers):
    root = build_tree(workers)
    for sphere in root.walk():
        assert [child.group for child in sphere.children] == list(range(len(sphere.children)))
        sizes = [len(child.leaves()) for child in sphere.children]
        assert sizes == sorted(sizes, reverse=True) and max(sizes, default=0) - min(sizes, default=0) <= 1


@pytest.mark.parametrize("workers, groups", [(24, 2), (144, 12), (13, 2)])
def test_the_pool_has_a_thread_per_worker_a_whole_number_of_groups_when_they_divide_evenly(workers, groups):
    root = build_tree(workers)
    assert pool_threads(root) == workers and len(root.children) == groups
    if workers % groups == 0:
        assert {len(g.children) for g in root.children} == {workers // groups}


def test_routes_lead_from_every_sphere_to_each_descendant_through_one_child():
    root = build_tree(150)
    table = routes(root)
    for sphere in root.walk():
        for child in sphere.children:
            assert all(table[sphere.id][d.id] == child.id for d in child.walk())


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
