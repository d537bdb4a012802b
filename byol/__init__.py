"""byol: Bootstrap Your Own Latent, fast and faithful self-supervised pretraining of image encoders."""

from .backbones import cut_at, resnet
from .ema import build_target, update_target
from .loss import byol_loss, regression_loss
from .model import BYOL, MLP
from .optim import LARS, build_optimizer, param_groups
from .schedules import cosine_lr, tau_schedule

__version__ = "0.1.0"

__all__ = [
    "BYOL", "MLP", "LARS", "byol_loss", "regression_loss", "build_target", "update_target",
    "cosine_lr", "tau_schedule", "build_optimizer", "param_groups", "resnet", "cut_at",
]
