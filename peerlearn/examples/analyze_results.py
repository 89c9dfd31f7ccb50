# %% [markdown]
# # Analysing peerlearn results with pandas
#
# A notebook-style script (cells marked `# %%`: VS Code, Jupytext and Spyder run them one by one;
# `python examples/analyze_results.py [SWEEP_DIR]` runs it whole). Without an argument it first runs a
# small sweep (2 learning rates x 2 seeds, 100 rounds, about a minute on 2 cores) into
# `runs/example-sweep/` under the working directory; running it again reuses that sweep.

# %%
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peerlearn import results  # noqa: E402

sweep = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs") / "example-sweep"
if len(sys.argv) == 1:  # "quickstart": the config bundled with peerlearn (or ./quickstart.yaml, if there is one)
    subprocess.run([sys.executable, "-m", "peerlearn", "sweep", "quickstart",
                    "--seeds", "0,1", "--grid", "algorithm.lr=0.05,0.1", "--set", "num_rounds=100",
                    "--out", str(sweep), "--quiet"], check=True)

# %% [markdown]
# ## Every evaluated round of every run
# One row per evaluated round; the config keys are columns (`algorithm.lr`, `seed`, ...), so grouping
# by any of them is one line.

# %%
df = results.load(sweep)
print(df[["cell", "seed", "round", "acc_mean", "bytes_sent_per_node"]].tail(8).to_string(index=False))

# %% [markdown]
# ## Mean and spread over seeds at each round

# %%
key = "algorithm.lr" if "algorithm.lr" in df else "cell"
curves = df.groupby([key, "round"]).acc_mean.agg(["mean", "std"]).reset_index()
print(curves[curves["round"] == curves["round"].max()].to_string(index=False))

fig, ax = plt.subplots(figsize=(6.4, 4))
for value, part in curves.groupby(key):
    ax.plot(part["round"], part["mean"], label=f"{key} = {value}")
    ax.fill_between(part["round"], part["mean"] - part["std"].fillna(0), part["mean"] + part["std"].fillna(0),
                    alpha=0.2)
ax.set(xlabel="round", ylabel="mean node test accuracy", ylim=(0, 1))
ax.legend()
fig.tight_layout()
fig.savefig(sweep / "example_curves.png", dpi=120)
print(f"figure: {sweep / 'example_curves.png'}")

# %% [markdown]
# ## One row per run: final metrics, for a paper's table

# %%
final = results.load_summary(sweep)
table = final.groupby(key)[["acc_mean", "acc_min", "bytes_sent_per_node"]].agg(["mean", "std"])
print(table.to_string())

# %% [markdown]
# ## The final model of a run, as a torch module
# `load_model` rebuilds the run's model from its config and loads the honest nodes' average
# (`node=i` loads node i's own model).

# %%
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

run = Path(final.sort_values("acc_mean").iloc[-1]["run"])
model = results.load_model(run)
x, y = load_digits(return_X_y=True)
with torch.no_grad():
    logits = model(torch.tensor(x / 16.0, dtype=torch.float32))  # the digits loader scales pixels to [0, 1]
print(f"{run.name}: the averaged model labels {float((logits.argmax(-1).numpy() == y).mean()):.3f} of all "
      f"1,797 digits correctly (train and test together)")
