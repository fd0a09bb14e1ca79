"""The preset Gaussian mixtures."""
import numpy as np
import pytest

from pipeline.data.gmm import gmm_preset
from pipeline.errors import UserError
from pipeline.models.analytic import GaussianMixture


def test_gmm_presets():
    ring = gmm_preset("ring2d")
    assert isinstance(ring, GaussianMixture) and ring.dim == 2 and len(ring.weights) == 8
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 1.0)
    mix = gmm_preset("mix16d")
    assert mix.dim == 16 and np.isclose(mix.weights.sum(), 1.0)
    np.testing.assert_array_equal(gmm_preset("mix16d").means, mix.means)  # fixed seed
    with pytest.raises(UserError, match="ring2d"):
        gmm_preset("ring3d")
