"""Plain ``nn.Module`` definitions and the flat-parameter functional layer over them."""

from peerlearn.models.base import MODELS, ModelSpec
from peerlearn.models.functional import FlatModel, make_grad_fn, make_loss_fn, predict_logits
from peerlearn.models.nets import CNN, MLP, CharGRU, LogisticRegression, build_model
from peerlearn.models.deep import CharTransformer, ResNetCifar, VGG11Small  # registers resnet, vgg11, transformer

__all__ = ["MODELS", "ModelSpec", "CNN", "MLP", "CharGRU", "CharTransformer", "FlatModel", "ResNetCifar",
           "VGG11Small", "LogisticRegression", "build_model", "make_grad_fn", "make_loss_fn",
           "predict_logits"]
