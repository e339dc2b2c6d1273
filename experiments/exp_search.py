"""Search: the assignment's five hyperparameters (layers, learning rate, activation, batch size,
epochs) searched on digits instead of checked on a grid someone chose.

16 scrambled Sobol trials train as stacked populations (trials sharing an architecture, batch
size and epochs are one model); successive halving stops the weaker half of each population at
epochs 2, 4 (and 8) on val_acc. The best trial is then retrained on 3 fresh seeds and only those
seeds judge the claims: that it reaches 0.95 val_acc, and that it beats a plain default
(SGD lr=0.01, one layer, relu, batch 64, 10 epochs) trained on the same fresh seeds.
"""

import torch

import hpspec as hp

SPACE = hp.space(
    lr=hp.loguniform(1e-3, 1.0),
    layers=hp.choice([1, 2]),
    activation=hp.choice(["relu", "tanh"]),
    batch_size=hp.choice([64, 256]),
    epochs=hp.choice([6, 12]),
    hidden=32,
)
DEFAULT = dict(lr=0.01, layers=1, activation="relu", batch_size=64, epochs=10)


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
