"""The instructor's file: the assignment's claims, each worth points, run against the
student's recipe in student.py (``build(case)`` returns a model and an optimizer).

Grade a submission: ``pytest examples/assignment --hpspec-grade=results.json`` (Gradescope's
format; the terminal summary shows the score too).
"""

from student import build

import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr=[0.01, 0.3]),
    epochs=4,
    seeds=3,
    data=hp.datasets.digits(n_train=600),
    claims=[
        # A good learning rate gets past 85% validation accuracy in 4 epochs.
        hp.where(lr=0.3).expect(hp.metric("val_acc").final() >= 0.85, points=2),
        # Neither learning rate blows up.
        hp.expect(~hp.diverges(), points=1),
        # And the larger one beats the smaller, seed noise taken into account.
        hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 0.01},
                   points=3),
    ],
)
def assignment(case):
    return build(case)
