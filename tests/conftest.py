from __future__ import annotations

import pytest

from hpspec.results import Divergence, SeedResult


@pytest.fixture
def run():
    """Build a SeedResult from curves: run(seed=0, val_loss=[...], ...)."""

    def make(seed: int = 0, diverged: Divergence | None = None, measurements=None,
             initial=None, **curves):
        n = max((len(v) for v in curves.values()), default=0)
        return SeedResult(
            seed=seed,
            curves={k: list(v) for k, v in curves.items()},
            epoch_seconds=[0.5] * n,
            initial=initial or {},
            diverged=diverged,
            measurements=measurements or {},
            epochs_planned=n,
        )

    return make


@pytest.fixture(scope="session", autouse=True)
def _warm_torch():
    """Train one tiny cell in this process before any test runs.

    In-process pytester runs delete, afterwards, every module first imported inside them;
    torch imports some of its modules lazily (the compiler, on a meta-device forward or a
    deterministic-algorithms call; hpspec's recipe runs no longer import it, see
    hpspec/engine/compiler.py), and importing those a second time fails (they register
    operator namespaces). Importing them here, once, keeps them out of every snapshot.
    """
    import torch._dynamo  # noqa: F401
    import torch._inductor.config  # noqa: F401

    import hpspec as hp
    from hpspec.engine.runner import run_cell
    from hpspec.spec import build

    def tiny(case):
        import torch

        model = hp.models.mlp(64, [4], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    exp = build(hp.experiment(epochs=1, data=hp.datasets.digits(n_train=64))(tiny))
    run_cell(exp, exp.cells[0], "cpu")
