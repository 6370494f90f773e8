"""The engine this process is: set once when an engine starts serving, read by the code
it runs (remote objects, relayed pushes) and by the kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._engine import EngineProcess

__all__ = ["current_engine", "set_current_engine"]

_current: EngineProcess | None = None


def current_engine() -> EngineProcess | None:
    """The engine this code runs in (from a request it serves), or None outside engines."""
    return _current


def set_current_engine(engine: EngineProcess) -> None:
    """One engine per process: the code it runs finds it here."""
    global _current  # noqa: PLW0603 - the one place that sets it
    _current = engine
