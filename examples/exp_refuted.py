"""A claim that is false, and hpspec refutes it (run: pytest examples/).

"A smaller learning rate is always safer, so it ends with a lower validation loss" is a
common belief; with plain SGD for 10 epochs on the digits it is false, and decisively so.
This file lives outside experiments/ because its claim fails on purpose.
"""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr=[1e-3, 3e-2, 0.3]),
    fixed=dict(layers=2, hidden=128),
    epochs=10,
    seeds=3,
    data=hp.datasets.digits(),
    claims=[
        hp.compare(hp.metric("val_loss").final(), lower={"lr": 1e-3}, than={"lr": 0.3}),
    ],
)
def smaller_lr_is_better(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
