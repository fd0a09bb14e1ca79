"""Imports every sampler module so each registers itself (one line per module)."""
from pipeline.samplers import accel  # noqa: F401
from pipeline.samplers import baseline  # noqa: F401
from pipeline.samplers import ggdm  # noqa: F401
from pipeline.samplers import student  # noqa: F401
