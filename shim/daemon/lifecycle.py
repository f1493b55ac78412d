"""The task lifecycle as a table of allowed transitions.

Owns: which task actions are legal in which state, and the one error for an illegal one.
Does no I/O and knows nothing of protobuf, asyncio or wasm (docs/design.md, rules 1 and 3).

Rules (containerd docs/runtime-v2.md, runc shim behaviour):
- A task is born CREATED by Create; Start moves it to RUNNING; its exit moves it to STOPPED from any live state
  (a task killed before Start exits too).
- Pause/Resume move between RUNNING and PAUSED.
- Kill is legal while the task is live (CREATED, RUNNING, PAUSED); after exit it is NOT_FOUND
  ("process already finished"), which containerd and CRI treat as success.
- Delete is legal only once the task has no running process (CREATED or STOPPED).
- Every other (state, action) pair raises `InvalidTransition`, which the RPC layer maps to FAILED_PRECONDITION
  and whose message names the task, the action, the current state and the states that would allow it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TaskState(enum.IntEnum):
    """Values equal containerd.v1.types.Status so they go on the wire unchanged."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


class Action(enum.Enum):
    START = "start"
    EXIT = "exit"
    PAUSE = "pause"
    RESUME = "resume"
    KILL = "kill"
    DELETE = "delete"


_LIVE = (TaskState.CREATED, TaskState.RUNNING, TaskState.PAUSED)

#: (state, action) -> state after the action. KILL and DELETE do not change the state themselves:
#: a kill is followed by an EXIT, and a delete removes the task from the table.
TRANSITIONS: dict[tuple[TaskState, Action], TaskState] = {
    (TaskState.CREATED, Action.START): TaskState.RUNNING,
    (TaskState.RUNNING, Action.PAUSE): TaskState.PAUSED,
    (TaskState.PAUSED, Action.RESUME): TaskState.RUNNING,
    **{(s, Action.EXIT): TaskState.STOPPED for s in _LIVE},
    **{(s, Action.KILL): s for s in _LIVE},
    (TaskState.CREATED, Action.DELETE): TaskState.CREATED,
    (TaskState.STOPPED, Action.DELETE): TaskState.STOPPED,
}


def _allowed_states(action: Action) -> list[TaskState]:
    return [s for (s, a) in TRANSITIONS if a is action]


class InvalidTransition(Exception):
    """An action asked of a task in a state that does not allow it."""

    def __init__(self, task_id: str, action: Action, state: TaskState) -> None:
        self.task_id = task_id
        self.action = action
        self.state = state
        allowed = " or ".join(s.name.lower() for s in _allowed_states(action))
        super().__init__(
            f"cannot {action.value} task {task_id!r}: it is {state.name.lower()} ({action.value} needs {allowed})"
        )

    @property
    def already_finished(self) -> bool:
        """Kill after exit: containerd expects NOT_FOUND ("process already finished"), not a precondition error."""
        return self.action is Action.KILL and self.state is TaskState.STOPPED


@dataclass
class Lifecycle:
    """The state of one task; `apply` is the only way it changes."""

    task_id: str
    state: TaskState = TaskState.CREATED

    def check(self, action: Action) -> TaskState:
        """Return the state `action` would lead to, or raise InvalidTransition."""
        try:
            return TRANSITIONS[(self.state, action)]
        except KeyError:
            raise InvalidTransition(self.task_id, action, self.state) from None

    def apply(self, action: Action) -> TaskState:
        new = self.check(action)
        self.state = new
        return new

    @property
    def live(self) -> bool:
        return self.state in _LIVE
