"""Running code through an in-process IPython shell: the engine's namespace as its user
namespace, its rich output handed to the Kernel instead of a terminal.

Theory of operation
-------------------
Imported only when a :class:`Kernel` runs through IPython (``ipython=True``, or ``None``
with IPython importable), and only on first use: an engine that only applies functions
never pays for IPython. The rules:

* One shell per process is IPython's singleton (``display()`` and ``get_ipython()``
  find it through ``InteractiveShell.instance()``). A Kernel takes it when there is none
  or when another shoal Kernel made it; when the process already runs another IPython
  (a Kernel used inside a notebook), it makes a shell of its own that ``display()``
  does not reach.
* The shell's ``user_ns`` is the Kernel's namespace (the same dict), so
  ``apply_request``, ``push``/``pull`` and the shell see the same names.
* Output goes out through the Kernel's ``on_display(msg_type, content)``: the display
  publisher sends ``display_data`` / ``update_display_data`` / ``clear_output``, the
  display hook ``execute_result``, the pager (``x?``) ``display_data``. Without
  ``on_display``, display falls back to printing ``text/plain`` and results are dropped
  (the reply carries them).
* IPython prints no traceback: the Kernel answers the error reply (PROTOCOL.md).
* History lives in memory (no sqlite file shared by every engine of a host), and the
  output cache is off, so an engine keeps no result alive that the user did not keep.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, cast

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Any as AnyTrait
from traitlets import Type
from traitlets.config import Config

__all__ = ["ShoalShell", "complete", "make_shell", "trim_ipython_frames"]

import IPython

# Frames of code in IPython's folder are its own, cut from the front of tracebacks.
_IPYTHON_DIR = os.path.dirname(os.path.abspath(IPython.__file__)) + os.sep

OnDisplay = Callable[[str, dict[str, Any]], None]


class _Publisher(DisplayPublisher):
    """Sends ``display()`` and ``clear_output()`` to the Kernel's ``on_display``."""

    def publish(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: object = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: object,
    ) -> None:
        send = _sender(self.shell)
        if send is None:  # no front end: the plain text, as IPython without a display
            text = data.get("text/plain")
            if text is not None:
                print(text)
            return
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        send("update_display_data" if update else "display_data", content)

    def clear_output(self, wait: bool = False) -> None:
        send = _sender(self.shell)
        if send is not None:
            send("clear_output", {"wait": bool(wait)})


class _Hook(DisplayHook):
    """Sends an execute's result as ``execute_result``; prints no ``Out[n]:``."""

    def write_output_prompt(self) -> None:
        """No prompt: the front end numbers its output."""

    def write_format_data(
        self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None
    ) -> None:
        send = _sender(self.shell)
        if send is not None:
            content = {
                "execution_count": self.prompt_count,
                "data": format_dict,
                "metadata": md_dict or {},
            }
            send("execute_result", content)

    def finish_displayhook(self) -> None:
        """Nothing to flush: no terminal."""


class ShoalShell(InteractiveShell):
    """An IPython shell whose output goes to a shoal Kernel."""

    display_pub_class = Type(_Publisher)
    displayhook_class = Type(_Hook)
    #: ``on_display(msg_type, content)`` of the Kernel that uses this shell, or None.
    shoal_on_display = AnyTrait(None, allow_none=True)

    def _showtraceback(self, etype: object, evalue: object, stb: list[str]) -> None:
        """No traceback text here: the Kernel's error reply carries it."""

    def enable_gui(self, gui: object = None) -> None:
        raise NotImplementedError(f"an engine has no GUI event loop ({gui!r})")


def _sender(shell: object) -> OnDisplay | None:
    send = getattr(shell, "shoal_on_display", None)
    return send if callable(send) else None


def _pager(shell: ShoalShell) -> Callable[..., None]:
    """``x?`` and ``%page``: the text as display data, not a terminal pager."""

    def show(_shell: object, data: object, start: int = 0, screen_lines: int = 0) -> None:
        bundle = data if isinstance(data, dict) else {"text/plain": str(data)}
        if start and "text/plain" in bundle:
            bundle = {**bundle, "text/plain": "\n".join(bundle["text/plain"].split("\n")[start:])}
        shell.display_pub.publish(bundle)

    return show


def make_shell(namespace: dict[str, Any], on_display: OnDisplay | None) -> ShoalShell:
    """A shell that runs code in ``namespace`` (the same dict) and sends its output to
    ``on_display``."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.cache_size = 0
    config.InteractiveShell.colors = "nocolor"  # help text goes to other terminals
    main = sys.modules.get("__main__")
    same = main is not None and main.__dict__ is namespace
    where: dict[str, Any] = {"user_module": main} if same else {"user_ns": namespace}
    existing: object = InteractiveShell.instance() if InteractiveShell.initialized() else None
    if existing is None or isinstance(existing, ShoalShell):
        # clear_instance() clears a class and its bases: ShoalShell's own holds too.
        ShoalShell.clear_instance()
        shell = ShoalShell.instance(config=config, **where)
    else:  # another IPython runs this process: leave it the singleton
        shell = cast(Any, ShoalShell)(config=config, **where)
    shell.shoal_on_display = on_display
    cast(Any, shell).set_hook("show_in_pager", _pager(shell))
    return shell


def complete(shell: ShoalShell, code: str, cursor_pos: int) -> dict[str, Any]:
    """IPython's completions at ``cursor_pos``, as a ``complete_reply``'s content."""
    from IPython.core.completer import provisionalcompleter  # noqa: PLC0415

    with provisionalcompleter():
        found = list(shell.Completer.completions(code, cursor_pos))
    start = min((c.start for c in found), default=cursor_pos)
    end = max((c.end for c in found), default=cursor_pos)
    matches: list[str] = []
    for c in found:  # each widened to the common span, as Jupyter front ends expect
        text = code[start : c.start] + c.text + code[c.end : end]
        if text not in matches:
            matches.append(text)
    return {
        "status": "ok",
        "matches": matches,
        "cursor_start": start,
        "cursor_end": end,
        "metadata": {},
    }


def trim_ipython_frames(exc: BaseException) -> None:
    """Drop the leading traceback frames of IPython's own code (``run_code``), so the
    user's code comes first."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_IPYTHON_DIR):
        tb = tb.tb_next
    exc.__traceback__ = tb  # None: all IPython's (a SyntaxError shows its line itself)
