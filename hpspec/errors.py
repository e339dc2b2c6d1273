"""hpspec's exception types.

Every error a user can cause carries *where* (``file::function`` or an option name), *which*
argument, the offending *value* and a *fix*, so the message alone tells them what to change.
The plugin shows these without a traceback: the traceback would only show hpspec's insides.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HpspecError", "SpecError", "CellError"]


class HpspecError(Exception):
    """Base class of every error hpspec raises on purpose."""


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(HpspecError):
    """An experiment spec (or an option) that cannot be run as written.

    ``str(err)`` reads like
    ``exp_lr.py::digits_mlp: grid['lr'] = 0.1 must be a list of values; fix: write [0.1]``.
    """

    def __init__(
        self,
        problem: str,
        *,
        where: str = "",
        argument: str = "",
        value: Any = ...,
        fix: str = "",
    ) -> None:
        self.problem = problem
        self.where = where
        self.argument = argument
        self.value = value
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        head = f"{self.where}: " if self.where else ""
        if self.argument and self.value is not ...:
            subject = f"{self.argument} = {_short_repr(self.value)} "
        elif self.argument:
            subject = f"{self.argument}: "
        else:
            subject = ""
        tail = f"; fix: {self.fix}" if self.fix else ""
        return f"{head}{subject}{self.problem}{tail}"

    def at(self, where: str) -> SpecError:
        """The same error located at ``where`` (keeps an inner location if it had one)."""
        if self.where:
            return self
        return SpecError(
            self.problem, where=where, argument=self.argument, value=self.value, fix=self.fix
        )

    def __str__(self) -> str:
        return self.message


class CellError(HpspecError):
    """A cell that could not be trained for a reason hpspec can explain (bad recipe output,
    data that does not fit the model, out of memory, ...). Carries the cell's location."""


class BudgetExceeded(CellError):
    """A cell ran past its time budget (``timeout=`` or ``--hpspec-timeout``)."""
