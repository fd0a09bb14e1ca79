"""Problems: picklable recipes of a model and its reference, built again in each worker."""
import pickle

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.problems import analytic_problem, sampling_problem, teacher_problem

MEANS, STDS, WEIGHTS = [[-1.0, 0.0, 2.0], [1.0, 0.5, 0.0]], [0.2, 0.4], [0.3, 0.7]


def test_analytic_problem_survives_pickling_and_its_reference_is_exact_samples():
    p = pickle.loads(pickle.dumps(analytic_problem(MEANS, STDS, WEIGHTS, reference_samples=4000)))
    model = p.model()
    assert model.data_shape == (3,) and model.num_classes == 0 and model.schedule.name == "cosine"
    ref = p.reference(lambda x: x)
    assert ref.shape == (4000, 3)
    np.testing.assert_allclose(ref.mean(0), np.average(MEANS, axis=0, weights=WEIGHTS), atol=0.05)
    np.testing.assert_array_equal(ref, p.reference(lambda x: x))  # a fixed seed: the same reference everywhere


def test_a_missing_or_foreign_teacher_directory_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        teacher_problem(tmp_path / "nope")
    with pytest.raises(UserError, match="not a teacher run directory"):
        sampling_problem(tmp_path)
