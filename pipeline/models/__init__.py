"""Flax networks (U-Net, MLP), denoiser builders, exact analytic denoisers, the digit classifier."""
from pipeline.models.denoiser import conditional_eps_fn, guided_eps_fn, null_label, student_eps_fn
from pipeline.models.mlp import MLPDenoiser
from pipeline.models.unet import UNet, init_params, param_count

__all__ = ["UNet", "MLPDenoiser", "init_params", "param_count", "conditional_eps_fn", "guided_eps_fn", "student_eps_fn", "null_label"]
