"""The linear scaling rule as a non-inferiority claim (run: pytest examples/exp_linear_scaling.py).

"Multiply the batch size by k and the learning rate by k, and accuracy is kept" (Goyal et al.,
2017) is not a claim that one setting is *better*: it says the scaled run is *no worse* than
the base run by more than a tolerance. ``hp.noninferior`` states exactly that; it passes only
when the one-sided 95% bound on the accuracy lost stays inside the margin, and the seeds are
paired (both cells start from the same initial weights per seed).
"""

import torch

import hpspec as hp

BASE_BATCH, BASE_LR, K = 32, 0.05, 4


@hp.experiment(
    grid=hp.cells({"batch_size": BASE_BATCH, "lr": BASE_LR},
                  {"batch_size": K * BASE_BATCH, "lr": K * BASE_LR}),
    epochs=8,
    seeds=5,
    data=hp.datasets.digits(),
    claims=[
        hp.noninferior(hp.metric("val_acc").final(), {"batch_size": K * BASE_BATCH},
                       than={"batch_size": BASE_BATCH}, margin=0.02),
    ],
)
def linear_scaling(case):
    model = hp.models.mlp(64, [64], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
