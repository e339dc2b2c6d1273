"""Every use of pytest's private API, in one place, each with a fallback.

pytest gives no public way to (a) render an error raised in an item's setup without its
traceback, (b) cut hpspec's and pytest's own frames out of a user's traceback, or (c) read the
text of the terminal's current line (the live progress line restores it). The names below lean
on pytest internals (checked against pytest 8 and 9, the range pyproject allows); when a future
pytest moves one, hpspec degrades (a longer traceback, no live progress line) instead of
breaking. Imports pytest (this is pytest glue), never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr
else:
    try:  # only for annotations; a plain object serves if pytest moves it
        from _pytest._code.code import TerminalRepr
    except ImportError:  # pragma: no cover - depends on pytest's layout
        TerminalRepr = object

__all__ = ["FailureRepr", "TerminalRepr", "current_line", "filter_traceback"]

#: The traceback styles ExceptionInfo.getrepr takes.
_STYLES = ("long", "short", "line", "no", "native", "value")


class FailureRepr:
    """Mixin for a ``pytest.Item``: :meth:`failure_text` replaces a failure's traceback with a
    message, in the test call (public ``repr_failure``) and in setup (pytest renders setup and
    teardown errors through the private ``_repr_failure_py``); :meth:`keep_frame` cuts frames
    from the tracebacks that remain (pytest's private ``_traceback_filter`` hook)."""

    def failure_text(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
        """The text to show instead of a traceback, or None for pytest's own rendering."""
        return None

    def keep_frame(self, path: str) -> bool:
        """Whether a traceback frame in the file ``path`` is shown."""
        return True

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        text = self.failure_text(excinfo)
        if text is not None:
            return text
        return super().repr_failure(excinfo, style=style)  # type: ignore[misc]

    def _repr_failure_py(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        # pytest calls this for setup and teardown errors, and Node.repr_failure calls it for
        # the rest. A pytest without it on Node calls neither; should one call ours anyway,
        # the public ExceptionInfo.getrepr renders the error (not super().repr_failure, which
        # in pytest 8 and 9 calls back here).
        text = self.failure_text(excinfo)
        if text is not None:
            return text
        parent: Callable[..., Any] | None = getattr(super(), "_repr_failure_py", None)
        if parent is None:
            style = style if style in _STYLES else "long"
            try:  # a callable tbfilter: pytest >= 7.4
                return excinfo.getrepr(style=style, tbfilter=self._traceback_filter)
            except TypeError:
                return excinfo.getrepr(style=style)
        return parent(excinfo, style)  # type: ignore[no-any-return]

    def _traceback_filter(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        return filter_traceback(excinfo, self.keep_frame)


def filter_traceback(excinfo: pytest.ExceptionInfo[BaseException],
                     keep: Callable[[str], bool]) -> Any:
    """``excinfo``'s traceback without the frames ``keep`` rejects; the whole traceback when
    that would leave nothing, or when pytest's ``Traceback.filter`` is not what it was."""
    tb = excinfo.traceback
    try:
        filtered = tb.filter(lambda entry: keep(str(entry.path)))
    except (AttributeError, TypeError):
        return tb
    return filtered if len(filtered) else tb


def current_line(reporter: Any) -> str | None:
    """The text on the terminal's current line (the private ``_tw._current_line`` of pytest's
    terminal reporter), or None when it cannot be read: the caller then shows no progress line,
    since rewriting the line without its text would erase what pytest wrote there."""
    line = getattr(getattr(reporter, "_tw", None), "_current_line", None)
    return line if isinstance(line, str) else None
