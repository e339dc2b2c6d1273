"""An Optuna search (``pip install optuna``): the space of experiments/exp_search.py,
searched by Optuna's TPE sampler through its ask-and-tell interface.

The 16 trials are listed at collection by number (t00..t15); their values are asked when the
search runs, 4 at a time: each batch trains as one stacked model per batch size, its results
are told to TPE, which proposes the next batch from them. The run's table shows each trial's
values; the same command again asks the same values and serves every trial from the cache.
The best trial is then retrained on 3 fresh seeds, which alone judge the claim.
"""

import torch

import hpspec as hp

SPACE = hp.space(
    lr=hp.loguniform(1e-2, 1.0),
    layers=hp.choice([1, 2]),
    activation=hp.choice(["relu", "tanh"]),
    batch_size=hp.choice([32, 128]),
    hidden=32,
)


@hp.experiment(
    search=hp.optuna(SPACE, trials=16, sampler="tpe", seed=0, batch=4, metric="val_acc"),
    epochs=4,
    seeds=1,
    data=hp.datasets.digits(),
    claims=[hp.found(hp.metric("val_acc").final() >= 0.95, seeds=3)],
)
def digits_optuna(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10, activation=case.activation)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
