"""The README's Python API example as a script: run from the repository root with
``python examples/python_api.py`` (needs the pandas extra); prints what the README shows."""

import hpspec as hp

run = hp.run("experiments/exp_learning_rate.py", device="cpu")
print(">>> run"); print(repr(run))
print(">>> [(v.claim, v.outcome, v.p_pass) for v in run.verdicts if v.cell_id is None]")
print([(v.claim, v.outcome, v.p_pass) for v in run.verdicts if v.cell_id is None])
cell = next(c for c in run.cells if c.params["lr"] == 0.3)
print(">>> cell.cell_id, cell.outcome, [round(x, 3) for x in cell.curves[0]['val_loss']]")
print(cell.cell_id, cell.outcome, [round(x, 3) for x in cell.curves[0]["val_loss"]])
df = run.to_pandas()
print(">>> df.shape"); print(df.shape)
print('>>> df.groupby("lr")[["val_acc_final", "epochs"]].mean()')
print(df.groupby("lr")[["val_acc_final", "epochs"]].mean())
print(">>> print(run.table())"); print(run.table())
again = hp.load("latest")
print(">>> again = hp.load('latest'); again"); print(repr(again))
print(again.to_pandas().equals(df))
