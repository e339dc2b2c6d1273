"""Training: the part of hpspec that imports torch (tests/test_imports.py keeps it that way).

- :mod:`hpspec.engine.common`: the step primitives both engines share (a training step, the
  synchronising timer, divergence, the warm-up, the stop-rule type).
- :mod:`hpspec.engine.runner`: one cell's seeds, one after the other (recipe and loop mode),
  device choice, seeding, and the driver of stacked groups.
- :mod:`hpspec.engine.stacked`: many cells of one architecture trained as one batched model
  (MLPs by hand), and the stacked optimizers; :mod:`hpspec.engine.layered` (small CNNs by
  hand, on a CPU) and :mod:`hpspec.engine.vmapped` (any other model, through
  ``torch.func.vmap``) stack the rest.
- :mod:`hpspec.engine.probes`: live memory, FLOPs, model size, the inference profile.
- :mod:`hpspec.engine.models`: small models whose shape is a hyperparameter (``hp.models``).

Importing this package imports none of them (and not torch).
"""
