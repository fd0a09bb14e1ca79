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


def test_teacher_reference_is_its_own_many_step_ddim_samples_cached_by_its_weights(teachers, tmp_path, monkeypatch):
    """The reference of reference="teacher" is `steps`-step DDIM of the teacher from the
    reference seed (recomputed here by the sampler itself), cached: a second call samples
    nothing, and other weights get other samples."""
    import jax

    from pipeline import samplers
    from pipeline.evaluation import evaluator, problems
    from pipeline.evaluation.spec import sample_inputs
    from pipeline.teacher.model import load_teacher

    ref = problems.teacher_reference_samples(teachers["good"], tmp_path, steps=4, num=6, progress=False)
    T = load_teacher(teachers["good"])
    x_T, _, y = sample_inputs(jax.random.key(problems.TEACHER_REFERENCE_SEED), np.arange(6), T.data_shape, T.num_classes)
    want = samplers.sample("ddim", T.eps_fn(y), T.schedule, x_T, 4, stride="quadratic")
    np.testing.assert_allclose(ref, np.clip(np.asarray(want), -1, 1), atol=1e-5)

    def no_sampling(*a, **k):
        raise AssertionError("sampled again")

    monkeypatch.setattr(evaluator, "Evaluator", no_sampling)
    np.testing.assert_array_equal(problems.teacher_reference_samples(teachers["good"], tmp_path, 4, 6, progress=False), ref)
    with pytest.raises(AssertionError, match="sampled again"):
        problems.teacher_reference_samples(teachers["inf"], tmp_path, 4, 6, progress=False)
    prob = teacher_problem(teachers["good"], tmp_path, reference="teacher", reference_steps=4, reference_samples=6)
    np.testing.assert_array_equal(prob.reference(lambda x: x.reshape(len(x), -1)), ref.reshape(6, -1))
    with pytest.raises(UserError, match="reference"):
        teacher_problem(teachers["good"], tmp_path, reference="train")
