"""Contribution, influence and reputation scores: ``(init, update, read)`` scorers over what a round has
(:mod:`peerlearn.attribution.base`); ``attribution.score`` names one."""

from peerlearn.attribution.base import SCORES, AttributionSpec, RoundView, Scorer, ScoreSpec, ScoreTools, summary
from peerlearn.attribution.dice import dice_round, dice_scorer, row_functions
from peerlearn.attribution.loss_delta import loss_delta_scorer, round_loss_deltas
from peerlearn.attribution.meritrank import meritrank, meritrank_scorer, walk_visits

__all__ = ["SCORES", "AttributionSpec", "RoundView", "ScoreSpec", "ScoreTools", "Scorer", "dice_round", "dice_scorer",
           "loss_delta_scorer", "meritrank", "meritrank_scorer", "round_loss_deltas", "row_functions", "summary",
           "walk_visits"]
