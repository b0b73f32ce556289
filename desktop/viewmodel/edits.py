"""The edit state (slider values) with undo/redo; a drag is one undo step."""

from __future__ import annotations

from desktop.viewmodel.events import Event
from engine.api import EditState


class EditHistory:
    """Current `EditState` plus undo/redo stacks.

    `set_value(..., transient=True)` moves the current state without recording (a slider drag);
    `commit()` records the change since the last committed state as one undo step.
    """

    def __init__(self, limit: int = 200) -> None:
        self.changed = Event()  # (EditState, transient)
        self.history_changed = Event()
        self._state = EditState()
        self._committed = EditState()
        self._undo: list[EditState] = []
        self._redo: list[EditState] = []
        self._limit = limit

    @property
    def state(self) -> EditState:
        return self._state

    @property
    def can_undo(self) -> bool:
        return bool(self._undo) or self._state != self._committed

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def set_value(self, name: str, value: float, *, transient: bool = False) -> None:
        new = self._state.with_value(name, value)
        if new == self._state:
            if not transient:
                self.commit()
            return
        self._state = new
        if transient:
            self.changed.emit(new, True)
        else:
            self.commit()

    def set_state(self, state: EditState, *, record: bool = True) -> None:
        """Replace all values (restore from history or a PNG); `record=False` clears the history."""
        if not record:
            self._undo.clear()
            self._redo.clear()
            self._state = self._committed = state
            self.changed.emit(state, False)
            self.history_changed.emit()
            return
        if state == self._state and state == self._committed:
            return
        self._state = state
        self.commit()

    def reset(self, name: str) -> None:
        self.set_value(name, 0.0)

    def reset_all(self) -> None:
        self.set_state(EditState())

    def commit(self) -> None:
        """Record the change since the last commit as one undo step; `changed(state, False)` follows."""
        if self._state == self._committed:
            return
        self._undo.append(self._committed)
        del self._undo[: -self._limit]
        self._redo.clear()
        self._committed = self._state
        self.history_changed.emit()
        self.changed.emit(self._state, False)

    def undo(self) -> None:
        self.commit()
        if not self._undo:
            return
        self._redo.append(self._state)
        self._state = self._committed = self._undo.pop()
        self.changed.emit(self._state, False)
        self.history_changed.emit()

    def redo(self) -> None:
        if not self._redo:
            return
        self._undo.append(self._state)
        self._state = self._committed = self._redo.pop()
        self.changed.emit(self._state, False)
        self.history_changed.emit()
