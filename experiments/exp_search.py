"""Search: the assignment's five hyperparameters (layers, learning rate, activation, batch size,
epochs) searched on digits instead of checked on a grid someone chose.

16 scrambled Sobol trials; successive halving ranks ALL of them together on val_acc at epochs
2 and 4 (keeping the best half each time), whichever stacked group a trial trains in: at each
rung the trials still in are trained from scratch to the rung, stacked by architecture, so a
survivor's curve is exactly its unpruned curve. The best trial is then retrained on 3 fresh
seeds and only those seeds judge the claims: that it reaches 0.95 val_acc, and that it beats a
plain default (SGD lr=0.01, one layer, relu, batch 64, 8 epochs) trained on the same seeds.
"""

import torch

import hpspec as hp

SPACE = hp.space(
    lr=hp.loguniform(1e-2, 1.0),
    layers=hp.choice([1, 2]),
    activation=hp.choice(["relu", "tanh"]),
    batch_size=hp.choice([32, 128]),
    epochs=hp.choice([4, 8]),
    hidden=32,
)
DEFAULT = dict(lr=0.01, layers=1, activation="relu", batch_size=64, epochs=8)


@hp.experiment(
    search=hp.sobol(SPACE, trials=16, seed=0,
                    halving=hp.halving(min_epochs=2, eta=2, metric="val_acc")),
    seeds=1,
    data=hp.datasets.digits(),
    claims=[
        hp.found(hp.metric("val_acc").final() >= 0.95, seeds=3),
        hp.compare(hp.metric("val_acc").final(), higher="found", than=DEFAULT, seeds=3),
    ],
)
def digits_search(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10, activation=case.activation)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
