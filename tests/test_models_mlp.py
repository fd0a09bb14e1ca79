"""The MLP denoiser: shape, class conditioning, the zero-initialised guidance branch."""
import jax
import jax.numpy as jnp
import numpy as np

from pipeline.models.mlp import MLPDenoiser
from pipeline.models.unet import init_params

B = 4


def test_mlp_shape_and_w_branch():
    model = MLPDenoiser(hidden=32, depth=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (B, 5))
    t = jnp.linspace(0.1, 0.9, B)
    p = init_params(model, jax.random.key(1), x, t)
    out = model.apply(p, x, t, jnp.array([0, 1, 2, 3]))
    assert out.shape == (B, 5) and out.dtype == x.dtype
    np.testing.assert_array_equal(model.apply(p, x, t, None, jnp.full((B,), 3.0)), model.apply(p, x, t))
    assert not np.allclose(out, model.apply(p, x, t, jnp.zeros(B, jnp.int32)))
