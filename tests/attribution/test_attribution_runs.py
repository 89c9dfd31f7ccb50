"""Attribution in a run: the per-round score files, resume with the same rows, and the engines and sizes that
refuse a scorer with one line."""

import csv
import math

import pytest

from peerlearn import cli
from peerlearn.build import build
from peerlearn.config import ConfigError
from peerlearn.engines import simulate
from tests.conftest import checkpoint_keeper, same_rows, tiny_config

SCORED = {"threat": {"attack": "label_flip", "num_byzantine": 1}, "topology": {"graph": "ring"}}


@pytest.mark.parametrize("score", ["loss_delta", "dice", "meritrank"])
def test_a_run_resumed_from_a_checkpoint_gives_the_same_rows_and_scores(tmp_path, score):
    cfg = tiny_config(num_rounds=20, eval_every=5, attribution={"score": score}, **SCORED)
    keep, snapshots = checkpoint_keeper(tmp_path)  # through the disk format, as --resume reads it

    full = simulate(build(cfg), on_checkpoint=keep)
    resumed = simulate(build(cfg), resume=snapshots[10])
    assert same_rows(resumed) == same_rows(full)
    assert not math.isnan(full[-1]["score_auc"])


def test_the_run_folder_holds_a_scores_file_per_evaluated_round(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("num_nodes: 8\nnum_rounds: 10\neval_every: 5\ndata: {dataset: digits}\n"
                      "model: {name: mlp, hidden: [8]}\nthreat: {num_byzantine: 1, attack: label_flip}\n"
                      "attribution: {score: loss_delta}\n")
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    files = sorted(p.name for p in (tmp_path / "run" / "attribution").iterdir())
    assert files == ["round_000000.csv", "round_000005.csv", "round_000010.csv"]
    with open(tmp_path / "run" / "attribution" / "round_000010.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and sum(int(r["honest"]) for r in table) == 7
    worst = min(table, key=lambda r: float(r["score"]))
    assert worst["honest"] == "0"  # the label flipper
    # a fresh run in the same folder starts with no scores from the last one
    config.write_text(config.read_text().replace("num_rounds: 10", "num_rounds: 5"))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "run"), "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "attribution").iterdir()) == ["round_000000.csv",
                                                                                      "round_000005.csv"]


@pytest.mark.parametrize("sections, field", [
    ({"num_nodes": 300, "attribution": {"score": "meritrank"}}, "attribution.score"),
    ({"algorithm": {"name": "gossip_learning"}, "attribution": {"score": "loss_delta"}}, "attribution.score"),
    ({"attribution": {"score": "dice", "hops": 0}}, "attribution.hops"),
])
def test_a_scorer_it_cannot_run_is_one_line_naming_the_field(sections, field):
    with pytest.raises(ConfigError, match=f"^config error: {field}:"):
        tiny_config(**sections)


@pytest.mark.parametrize("engine", ["distributed", "p2p"])
def test_the_engines_on_real_processes_refuse_a_scorer_before_any_work(engine):
    from peerlearn.engines import distributed
    from peerlearn.engines.p2p import peer

    cfg = tiny_config(attribution={"score": "loss_delta"})
    check = distributed.check_config if engine == "distributed" else peer.check_config
    with pytest.raises(ConfigError, match="^config error: attribution.score: scores are computed by the simulator"):
        check(cfg, 2)
