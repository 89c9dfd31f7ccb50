# %% [markdown]
# # DICE against leave-one-node-out retraining, on the quickstart
#
# DICE (Zhu et al., ICLR 2025) estimates each node's data's influence on the network's test loss from one
# run; the exact answer it approximates retrains once per node without that node's data. This script does
# both on the quickstart (64 nodes on a ring, digits; the node left out keeps gossiping, its loss weighed by
# zero) and prints their Spearman rank correlation. `python examples/dice_leave_one_out.py [ROUNDS] [HOPS]`
# (default 100 rounds, 2 hops: 65 runs, a few minutes on 2 cores); `docs/howto/attribution.md` records its output.

# %%
import sys
import time

import torch
from scipy.stats import spearmanr

from peerlearn.build import build
from peerlearn.bundled import config_path
from peerlearn.config import load_config
from peerlearn.engines import simulate
from peerlearn.models.functional import make_loss_fn

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
hops = int(sys.argv[2]) if len(sys.argv) > 2 else 2
sets = [f"num_rounds={rounds}", f"eval_every={rounds}", "attribution.score=dice", f"attribution.hops={hops}"]
cfg = load_config(config_path("quickstart"), sets)


def final_test_loss(built, params_NP) -> float:
    """The nodes' mean loss on the whole test set (what leaving a node out changes)."""
    loss, ds = make_loss_fn(built.flat), built.dataset
    return float(torch.stack([loss(p, ds.x_test, ds.y_test) for p in params_NP]).mean())


# %% [markdown]
# ## One run with DICE, then one run per node without its data

# %%
started, finals, tables = time.perf_counter(), {}, {}
built = build(cfg)
simulate(built, on_finish=lambda p: finals.__setitem__("all", final_test_loss(built, p)),
         on_scores=lambda r, table: tables.__setitem__(r, table))
dice = tables[rounds]["node"]  # influence on the mean test loss: positive = the node's data lowers it
leave_one_out = torch.zeros(cfg.num_nodes)
for j in range(cfg.num_nodes):
    other = build(load_config(config_path("quickstart"), sets[:2]))
    silent = torch.zeros(cfg.num_nodes, dtype=torch.bool)
    silent[j] = True
    other.batches.silent_N = silent  # node j's batches weigh nothing: it trains on no data, and still gossips
    simulate(other, on_finish=lambda p: finals.__setitem__(j, final_test_loss(other, p)))
    leave_one_out[j] = finals[j] - finals["all"]  # how much the test loss rises without node j's data

# %% [markdown]
# ## How well the one-run estimate ranks the nodes

# %%
rho = spearmanr(dice.numpy(), leave_one_out.numpy()).correlation
print(f"quickstart, {rounds} rounds, DICE with {hops} hop(s) vs leave-one-node-out over {cfg.num_nodes} nodes: "
      f"Spearman {rho:.3f} ({time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads)")
