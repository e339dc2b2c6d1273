"""Epochs: one epoch under-fits; a few reach the best validation loss; hundreds over-fit a
small training set (train loss near zero, validation loss back up from its minimum)."""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(epochs=[1, 15, 200]),
    fixed=dict(lr=3e-3),
    batch_size=32,
    seeds=3,
    data=hp.datasets.digits(n_train=150),
    claims=[
        hp.where(epochs=1).expect(hp.metric("train_loss").final() > 1.0),
        hp.where(epochs=1).expect(hp.metric("val_acc").final() < 0.6),
        hp.where(epochs=15).expect(hp.metric("val_acc").final() >= 0.85),
        hp.where(epochs=200).expect(hp.metric("train_loss").final() < 0.01),
        hp.where(epochs=200).expect(
            hp.metric("val_loss").final() > 1.2 * hp.metric("val_loss").min()
        ),
        hp.where(epochs=200).expect(hp.metric("val_loss").argmin() <= 20),
    ],
)
def overfit_small_digits(case):
    model = hp.models.mlp(64, [256, 256], 10)
    return model, torch.optim.Adam(model.parameters(), lr=case.lr)
