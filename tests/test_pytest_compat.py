"""hpspec/_pytest_compat.py: pytest's private API behind one door, and the plugin still works
when a pytest release moves what it leans on."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest

from hpspec import _pytest_compat as compat

EXPERIMENTS = {
    # lr=0.5 holds its claim, lr=0.1 fails it (a message, no traceback)
    "exp_loop": """
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.1, 0.5]), epochs=3,
                       claims=[hp.expect(hp.metric("loss").final() < 0.5)])
        def loop(case):
            loss = 1.0
            for _ in range(3):
                loss *= (1 - case.lr)
                yield {"loss": loss}
    """,
    # a broken spec: an error in setup, rendered through the private _repr_failure_py
    "exp_broken": """
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[]), epochs=1)
        def broken(case):
            yield {"loss": 1.0}
    """,
    # the user's own exception: pytest's traceback, hpspec's frames cut
    "exp_raises": """
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1)
        def raises(case):
            raise ValueError("boom from the recipe")
            yield {"loss": 1.0}
    """,
}

RECIPE = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3]), epochs=3, data=hp.datasets.digits(n_train=100))
def digits(case):
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""

# Blocks every _pytest import made by hpspec._pytest_compat and removes the private methods
# hpspec overrides from pytest's Node, then runs a session: what a pytest that moved them
# would give.
RUNNER = """
import builtins, sys
import _pytest.nodes
import pytest

real_import = builtins.__import__

def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    # (pytest's own assertion rewriter imports _pytest.assertion.* from any module's frame)
    if (name.startswith("_pytest") and not name.startswith("_pytest.assertion")
            and (globals or {}).get("__name__") == "hpspec._pytest_compat"):
        raise ImportError("blocked by the test: " + name)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded
del _pytest.nodes.Node._repr_failure_py
code = pytest.main(["-p", "no:cacheprovider", "--hpspec-cache=off", "-rA"])
import hpspec._pytest_compat as compat
print("FALLBACK TerminalRepr is object:", compat.TerminalRepr is object)
sys.exit(int(code))
"""


def test_plugin_runs_when_pytest_private_import_and_method_are_gone(pytester):
    for name, source in EXPERIMENTS.items():
        pytester.makepyfile(**{name: textwrap.dedent(source)})
    pytester.makepyfile(run_session=RUNNER)
    result = pytester.run(sys.executable, "run_session.py")
    out = result.stdout.str() + result.stderr.str()
    assert "FALLBACK TerminalRepr is object: True" in out  # the fallback path really ran
    assert "INTERNALERROR" not in out and "RecursionError" not in out
    result.stdout.fnmatch_lines(["*2 failed, 1 passed, 1 error*"])
    assert "hpspec spec error:" in out  # the setup error, as a message
    assert "loss final < 0.5" in out  # the failed claim's message
    assert "ValueError: boom from the recipe" in out
    assert "def from_call(" not in out  # pytest's own frames still cut from the user's error


def test_current_line_reads_the_terminal_or_gives_none():
    writer = SimpleNamespace(_current_line="exp_a.py ..")
    assert compat.current_line(SimpleNamespace(_tw=writer)) == "exp_a.py .."
    assert compat.current_line(SimpleNamespace()) is None  # no _tw
    assert compat.current_line(SimpleNamespace(_tw=SimpleNamespace())) is None


def test_filter_traceback_keeps_everything_when_filter_changes():
    class Tb(list):
        def filter(self, fn):
            raise TypeError("a new signature")

    tb = Tb([1, 2])
    assert compat.filter_traceback(SimpleNamespace(traceback=tb), lambda p: False) is tb


def test_failure_repr_without_pytests_private_method():
    class Base:  # a Node without _repr_failure_py
        def repr_failure(self, excinfo, style=None):
            raise AssertionError("must not be called: pytest's calls back into us")

    class Item(compat.FailureRepr, Base):
        text: str | None = None

        def failure_text(self, excinfo):
            return self.text

    try:
        raise ValueError("user's own")
    except ValueError:
        info = pytest.ExceptionInfo.from_current()
    item = Item()
    assert "ValueError: user's own" in str(item._repr_failure_py(info, style="short"))
    item.text = "hpspec's message"
    assert item._repr_failure_py(info) == "hpspec's message"
    assert item.repr_failure(info) == "hpspec's message"


@pytest.mark.parametrize("readable", [True, False])
def test_no_live_progress_line_when_the_current_line_cannot_be_read(
        pytester, monkeypatch, readable):
    import hpspec.plugin

    monkeypatch.setattr(hpspec.plugin, "PROGRESS_INTERVAL", 0.0)
    if not readable:
        monkeypatch.setattr(hpspec.plugin, "current_line", lambda reporter: None)
    pytester.makepyfile(exp_digits=RECIPE)  # recipe mode reports progress by epoch
    pytester.makeconftest("""
        import pytest
        from _pytest.compat import CallableBool

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            config.pluginmanager.get_plugin("terminalreporter").isatty = CallableBool(True)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--hpspec-cache=off")
    # readable: the progress line shows (so its absence below is the fallback's doing)
    assert (" epoch 3/3 loss " in result.stdout.str()) is readable
    result.assert_outcomes(passed=1)
