"""A small CNN on the 8x8 digits seen as 1x8x8 images: a few epochs of SGD learn them at any
width of the convolution, too small a learning rate under-fits, and more channels help.

Not an MLP: on a CPU the cells stack as CNNs laid out by hand (``hpspec/engine/layered.py``),
elsewhere through ``torch.func.vmap``; one stack per channel count, its lr x seed trained
together, rather than one by one.
"""

import torch
from torch import nn

import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr=[0.003, 0.1], channels=[4, 8]),
    epochs=4,
    batch_size=64,
    seeds=2,
    data=hp.datasets.digits(),
    claims=[
        hp.where(lr=0.1).expect(hp.metric("val_acc").final() >= 0.9),
        hp.where(lr=0.003).expect(hp.metric("val_acc").final() < 0.9),
        hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.1}, than={"lr": 0.003}),
    ],
)
def digits_cnn(case):
    # the data are rows of 64 pixels: the model sees them as one-channel 8x8 images
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, case.channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(case.channels * 16, 10),
    )
    return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)
