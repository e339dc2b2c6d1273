"""Activation: in a 3-hidden-layer net trained with SGD, tanh and elu learn fastest, relu
is slower from this init, and sigmoid's gradients vanish."""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(activation=["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu"]),
    fixed=dict(layers=3, hidden=64, lr=0.05),
    epochs=5,
    # Seeds are added (up to 12 per cell) until the comparison below is decided.
    seeds=hp.adaptive(min=3, max=12, step=2),
    data=hp.datasets.digits(),
    claims=[
        hp.where(activation=["tanh", "elu"]).expect(hp.metric("val_acc").final() >= 0.75),
        hp.where(activation=["relu", "leaky_relu"]).expect(hp.metric("val_acc").final() >= 0.4),
        hp.where(activation="sigmoid").expect(hp.metric("train_loss").final() > 2.25),
        hp.compare(hp.metric("val_acc").final(), higher={"activation": "tanh"},
                   than={"activation": "relu"}),
        hp.compare(hp.metric("train_loss").final(), lower={"activation": "elu"},
                   than={"activation": "tanh"}),
    ],
)
def activation_sgd(case):
    model = hp.models.mlp(64, [case.hidden] * case.layers, 10, activation=case.activation)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
