"""When does gossip beat an all-reduce per iteration? The runtime model against the simulated clock.

For the quickstart's model (the 64-unit MLP on digits, 4,810 parameters) and a 10 Mbps uplink, the per-iteration
time of D-SGD on a ring (degree 2) and on a random 8-regular graph, and of a ring all-reduce (centralized SGD),
as the latency grows: lines from the runtime model (``peerlearn.world.runtime``), markers from the simulator's
clock with ``clock.collective_latency: per_hop``. Prints the predicted and simulated crossover latencies (a
Markdown table) for 16, 64 and 256 nodes, also with gossip overlapping the gradient (``clock.overlap``,
combine-then-adapt D-SGD), and writes a figure of the 64-node case.

Usage: ``.venv/bin/python examples/runtime_crossover.py [--out docs/figures/runtime_crossover.png]`` (about 20 s
on one core).

References: Wang, Zhang, Wu & Johansson, "From Promise to Practice: Realizing High-performance Decentralized
Training", ICLR 2025.
"""

from __future__ import annotations

import argparse

import numpy as np

from peerlearn.build import build
from peerlearn.bundled import config_path
from peerlearn.config import load_config
from peerlearn.engines import simulate
from peerlearn.world.runtime import crossover_latency, gossip_s, iteration_s, ring_all_reduce_s

STEP_S, MBPS, ROUNDS = 0.05, 10.0, 2
TOPOLOGIES = {"ring (d = 2)": (["topology.graph=ring"], 2),
              "8-regular (d = 8)": (["topology.graph=random_regular", "topology.degree=8"], 8)}


def per_iteration_s(num_nodes: int, algorithm: str, topology: list[str], latency_ms: float,
                    overlap: bool = False) -> tuple[float, int]:
    """Simulated seconds per round, and the model's bytes (``overlap``: D-SGD in combine-then-adapt order,
    gossiping while it computes)."""
    sets = [f"num_nodes={num_nodes}", f"num_rounds={ROUNDS}", f"eval_every={ROUNDS}", f"algorithm.name={algorithm}",
            f"clock.step_time_s={STEP_S}", f"clock.bandwidth_mbps={MBPS}", f"clock.latency_ms={latency_ms}",
            "clock.collective_latency=per_hop", "data.partition=iid", *topology]
    sets += ["algorithm.order=cta", "clock.overlap=true"] if overlap else []
    built = build(load_config(config_path("quickstart"), sets))
    return simulate(built)[-1]["sim_time_s"] / ROUNDS, built.flat.num_params * 4


def simulated_crossover_ms(num_nodes: int, topology: list[str], lo: float = 0.0, hi: float = 20.0,
                           overlap: bool = False) -> float:
    """Where the simulated lines (linear in the latency where gossip outlasts the step) meet; 0 when gossip is
    the faster at both ends."""
    g0, _ = per_iteration_s(num_nodes, "dsgd", topology, lo, overlap)
    g1, _ = per_iteration_s(num_nodes, "dsgd", topology, hi, overlap)
    r0, _ = per_iteration_s(num_nodes, "centralized", topology, lo)
    r1, _ = per_iteration_s(num_nodes, "centralized", topology, hi)
    return max(0.0, lo + (g0 - r0) / ((r1 - r0) - (g1 - g0)) * (hi - lo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runtime_crossover.png", help="where the figure goes")
    args = parser.parse_args()
    bandwidth = MBPS * 1e6 / 8
    _, model_bytes = per_iteration_s(16, "dsgd", TOPOLOGIES["ring (d = 2)"][0], 0.0)
    print(f"model {model_bytes} bytes, {MBPS} Mbps, {1e3 * STEP_S:.0f} ms compute per iteration\n")
    print("| nodes | graph | predicted crossover (ms) | simulated (ms) | with overlap: predicted (ms) | simulated (ms) "
          "| all-reduce at 10 ms | gossip at 10 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (16, 64, 256):
        for name, (topology, degree) in TOPOLOGIES.items():
            predicted = 1e3 * crossover_latency(n, degree, model_bytes, bandwidth, STEP_S)
            simulated = simulated_crossover_ms(n, topology)
            overlapped = 1e3 * crossover_latency(n, degree, model_bytes, bandwidth, STEP_S, overlap=True)
            simulated_overlapped = simulated_crossover_ms(n, topology, overlap=True)
            reduce = iteration_s(STEP_S, ring_all_reduce_s(n, model_bytes, bandwidth, 0.01))
            gossip = iteration_s(STEP_S, gossip_s(degree, model_bytes, bandwidth, 0.01))
            print(f"| {n} | {name} | {predicted:.4f} | {simulated:.4f} | {overlapped:.4f} | {simulated_overlapped:.4f} "
                  f"| {reduce:.3f} s | {gossip:.3f} s |")

    from peerlearn.report.plots import subplots

    fig, ax = subplots(1, 1, figsize=(6.5, 4.2))
    latencies = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 10.0])
    grid = np.linspace(0, 10, 101)
    n = 64
    ax.plot(grid, [1e3 * iteration_s(STEP_S, ring_all_reduce_s(n, model_bytes, bandwidth, a / 1e3)) for a in grid],
            color="C3", label="ring all-reduce (model)")
    sim = [1e3 * per_iteration_s(n, "centralized", TOPOLOGIES["ring (d = 2)"][0], a)[0] for a in latencies]
    ax.plot(latencies, sim, "o", color="C3", label="ring all-reduce (simulated)")
    for k, (name, (topology, degree)) in enumerate(TOPOLOGIES.items()):
        ax.plot(grid, [1e3 * iteration_s(STEP_S, gossip_s(degree, model_bytes, bandwidth, a / 1e3)) for a in grid],
                color=f"C{k}", label=f"gossip, {name} (model)")
        sim = [1e3 * per_iteration_s(n, "dsgd", topology, a)[0] for a in latencies]
        ax.plot(latencies, sim, "s", color=f"C{k}", label=f"gossip, {name} (simulated)")
    ax.set_xlabel("latency per message (ms)")
    ax.set_ylabel("time per iteration (ms)")
    ax.set_title(f"{n} nodes, {model_bytes / 1e3:.1f} kB model, {MBPS:.0f} Mbps, {1e3 * STEP_S:.0f} ms compute")
    ax.legend(fontsize=8)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
