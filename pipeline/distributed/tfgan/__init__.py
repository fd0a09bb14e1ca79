"""The tensorflow-gan metrics backend: `backend` (the driver side: venv check, actor, KID/FID
and Inception activations) and `worker` (the actor's code, run under the tfgan venv's
interpreter with NumPy < 2 and no JAX). Nothing is imported here, so that the tfgan venv can
import `pipeline.distributed.tfgan.worker` alone."""
