"""Depth: with plain SGD and no normalisation, a deep ReLU net barely moves in 5 epochs
while one or two hidden layers learn the digits."""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(layers=[1, 2, 4, 8]),
    fixed=dict(hidden=64, lr=0.1),
    epochs=5,
    seeds=3,
    data=hp.datasets.digits(),
    claims=[
        hp.where(layers=[1, 2]).expect(hp.metric("val_acc").above(0.9).within(epochs=5)),
        hp.where(layers=8).expect(hp.metric("train_loss").final() > 2.2),
        hp.expect(~hp.diverges()),
        hp.trend(hp.metric("train_loss").final(), over="layers", increasing=True),
    ],
)
def depth_sgd(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10, activation="relu")
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
