"""The task lifecycle table (shim/daemon/lifecycle.py): every allowed transition, and the one error for the rest."""

from __future__ import annotations

import pytest

from wasm_shim.shim.daemon.lifecycle import TRANSITIONS, Action, InvalidTransition, Lifecycle, TaskState

LIVE = (TaskState.CREATED, TaskState.RUNNING, TaskState.PAUSED)


def test_normal_run():
    life = Lifecycle("t1")
    assert life.state is TaskState.CREATED
    assert life.apply(Action.START) is TaskState.RUNNING
    assert life.apply(Action.KILL) is TaskState.RUNNING
    assert life.apply(Action.EXIT) is TaskState.STOPPED
    assert life.apply(Action.DELETE) is TaskState.STOPPED


def test_killed_before_start_exits():
    life = Lifecycle("t1")
    life.apply(Action.KILL)
    assert life.apply(Action.EXIT) is TaskState.STOPPED


def test_pause_resume():
    life = Lifecycle("t1", TaskState.RUNNING)
    assert life.apply(Action.PAUSE) is TaskState.PAUSED
    assert life.apply(Action.EXIT) is TaskState.STOPPED  # a paused task can be killed and exit
    life = Lifecycle("t2", TaskState.PAUSED)
    assert life.apply(Action.RESUME) is TaskState.RUNNING


@pytest.mark.parametrize("state", list(TaskState))
@pytest.mark.parametrize("action", list(Action))
def test_table_is_total(state, action):
    """Every (state, action) pair either transitions per the table or raises InvalidTransition, never else."""
    life = Lifecycle("t", state)
    if (state, action) in TRANSITIONS:
        assert life.apply(action) is TRANSITIONS[(state, action)]
    else:
        with pytest.raises(InvalidTransition) as info:
            life.apply(action)
        assert life.state is state  # a refused action changes nothing
        assert info.value.state is state and info.value.action is action


def test_error_names_both_states():
    life = Lifecycle("web", TaskState.RUNNING)
    with pytest.raises(InvalidTransition) as info:
        life.apply(Action.DELETE)
    message = str(info.value)
    assert "'web'" in message
    assert "it is running" in message
    assert "created or stopped" in message


def test_start_twice_refused():
    life = Lifecycle("t", TaskState.RUNNING)
    with pytest.raises(InvalidTransition, match="start needs created"):
        life.apply(Action.START)


def test_kill_after_exit_is_already_finished():
    life = Lifecycle("t", TaskState.STOPPED)
    with pytest.raises(InvalidTransition) as info:
        life.apply(Action.KILL)
    assert info.value.already_finished
    with pytest.raises(InvalidTransition) as other:
        Lifecycle("t", TaskState.RUNNING).apply(Action.START)
    assert not other.value.already_finished


def test_live_states():
    assert [s for s in TaskState if Lifecycle("t", s).live] == list(LIVE)
