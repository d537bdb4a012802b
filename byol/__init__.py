"""byol: Bootstrap Your Own Latent, fast and faithful self-supervised pretraining of image encoders."""

__version__ = "0.1.0"  # before the imports: checkpoint.py reads it

from .backbones import cut_at, resnet
from .ema import build_target, update_target
from .loss import byol_loss, regression_loss
from .model import BYOL, MLP
from .optim import LARS, build_optimizer, param_groups
from .schedules import cosine_lr, tau_schedule
from .config import Config, load_config
from .train import pretrain
from .pipeline import embed, export, knn, linear, load_encoder
from .step import keep_freed_memory

__all__ = [
    "BYOL", "MLP", "LARS", "byol_loss", "regression_loss", "build_target", "update_target",
    "cosine_lr", "tau_schedule", "build_optimizer", "param_groups", "resnet", "cut_at",
    "Config", "load_config", "pretrain", "knn", "linear", "embed", "export", "load_encoder", "keep_freed_memory",
]
