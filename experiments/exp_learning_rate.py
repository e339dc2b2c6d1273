"""Learning rate: too low learns slowly, a good one converges, far too high diverges."""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr=[1e-3, 3e-2, 0.3, 50.0]),
    fixed=dict(layers=2, hidden=128),
    epochs=10,
    batch_size=64,
    seeds=5,
    data=hp.datasets.digits(),
    claims=[
        hp.where(lr=0.3).expect(hp.metric("val_acc").final() >= 0.95),
        hp.where(lr=0.3).expect(hp.metric("val_loss").below(0.3).within(epochs=3)),
        hp.where(lr=3e-2).expect(hp.converges()),
        hp.where(lr=1e-3).expect(hp.metric("train_loss").final() > 2.0),
        hp.where(lr=50.0).expect(hp.diverges().within(epochs=1)),
        hp.where(lr=[1e-3, 3e-2, 0.3]).expect(~hp.diverges()),
        hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 3e-2}),
        hp.best(hp.metric("val_acc").final(), cell={"lr": 0.3}),
    ],
)
def sgd_lr(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
