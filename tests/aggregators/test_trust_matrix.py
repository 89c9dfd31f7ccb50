"""The attack x defence matrix takes the trust-based defences like any other aggregator."""

import csv

from peerlearn import cli


def test_the_matrix_runs_every_trust_based_defence(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text("num_nodes: 16\nnum_rounds: 6\neval_every: 6\ntopology: {graph: random_regular, degree: 4}\n"
                      "data: {dataset: digits, test_samples: 100}\nmodel: {name: mlp, hidden: [8]}\n"
                      "algorithm: {name: dsgd, lr: 0.1, batch_size: 4}\nthreat: {num_byzantine: 2, attack: gaussian}\n")
    defenses = ["flag", "reputation:mode=weight", "blocklist:f=2", "sybilwall", "bristle:closest=3"]
    out = tmp_path / "matrix"
    assert cli.main(["matrix", str(config), "--attacks", "gaussian", "sign_flip", "--defenses", *defenses,
                     "--out", str(out), "--quiet"]) == 0
    with open(out / "matrix.csv") as f:
        rows = list(csv.DictReader(f))
    cells = {(r["attack"], r["defense"]) for r in rows}
    assert {(a, d) for a in ("gaussian", "sign_flip") for d in defenses} <= cells
    assert all(r["status"] == "completed" for r in rows)
    assert all(0.0 <= float(r["acc_mean"]) <= 1.0 for r in rows)
