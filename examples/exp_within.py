"""A time-to-target claim that fails, and how hpspec shows it (run: pytest examples/).

"Plain SGD at lr=0.03 gets the digits' validation loss below 0.3 within 3 epochs" does not
hold: the failure lists each seed's curve against the target. The claim is all lr=0.03 is
asked, so its seeds stop once epoch 3 has decided it (``--hpspec-full-curves`` trains all 5).
This file lives outside experiments/ because its claim fails on purpose.
"""

import torch

import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr=[0.03, 0.3]),
    epochs=5,
    seeds=3,
    data=hp.datasets.digits(),
    claims=[hp.where(lr=0.03).expect(hp.metric("val_loss").below(0.3).within(epochs=3))],
)
def digits_mlp(case):
    model = hp.models.mlp(64, [32], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
