"""What a search optimises for, for a Gaussian-mixture preset: the exact denoiser, its samples as
features, a fixed exact reference drawn from a seed no evaluation uses."""
import numpy as np

from pipeline import ddss
from pipeline.data.gmm import gmm_preset
from pipeline.ddss.problem import build_problem
from pipeline.evaluation import analytic_problem


def test_gmm_problem_reference_and_meta():
    cfg = ddss.load_config(None, {"gmm": "ring2d", "steps": 3, "reference_samples": 64})
    problem = build_problem(cfg)
    assert problem.meta == {"gmm": "ring2d", "schedule": "cosine", "features": "samples", "data_shape": [2]}
    assert problem.model.data_shape == (2,) and problem.model.schedule.name == "cosine"
    assert problem.reference.shape == (64, 2) and problem.reference.dtype == np.float32
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(problem.feature_fn(x), x.reshape(3, 4))  # the samples themselves
    np.testing.assert_array_equal(build_problem(cfg).reference, problem.reference)  # fixed: the same in every process

    # exact samples of the mixture (|x| ~ 1 on the ring), but not the evaluation's reference samples
    assert abs(np.linalg.norm(problem.reference, axis=1).mean() - 1.0) < 0.1
    ring = gmm_preset("ring2d")
    evaluation = analytic_problem(ring.means, ring.stds, ring.weights, reference_samples=64).reference(lambda a: a)
    assert evaluation.shape == (64, 2) and not np.allclose(evaluation, problem.reference, atol=0.1)
