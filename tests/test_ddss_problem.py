"""What a search optimises for: for a Gaussian-mixture preset the exact denoiser, its samples as
features, fixed exact references (the loss's and the validation's) drawn from seeds no evaluation
uses; for a teacher, its training split parted by a fixed permutation, the test split unread."""
import numpy as np
import pytest

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


def test_holdout_split_is_a_fixed_partition():
    from pipeline.ddss.problem import holdout_split
    from pipeline.errors import UserError

    loss, held = holdout_split(1437, 0.2)
    assert len(held) == 287 and len(loss) == 1150  # round(0.2 * 1437)
    assert np.array_equal(np.sort(np.concatenate([loss, held])), np.arange(1437))  # disjoint, all rows
    assert np.all(np.diff(held) > 0) and held.max() > 1000 and held.min() < 100  # spread over the split, not its tail
    again = holdout_split(1437, 0.2)
    assert np.array_equal(again[0], loss) and np.array_equal(again[1], held)  # the same in every process and run
    loss0, held0 = holdout_split(50, 0.0)
    assert np.array_equal(loss0, np.arange(50)) and held0.size == 0
    for n, fraction in ((10, 0.05), (10, 0.9)):
        with pytest.raises(UserError, match="'holdout_fraction'.* each needs at least 2"):
            holdout_split(n, fraction)


def test_gmm_validation_reference_is_exact_samples_of_another_seed():
    cfg = ddss.load_config(None, {"gmm": "ring2d", "steps": 3, "reference_samples": 256})
    problem = build_problem(cfg)
    val = problem.validation
    assert val.shape == (256, 2) and val.dtype == np.float32
    assert abs(np.linalg.norm(val, axis=1).mean() - 1.0) < 0.1  # on the ring
    assert not np.any(np.all(np.isclose(val[:, None], problem.reference[None]), axis=2))  # no sample shared
    np.testing.assert_array_equal(build_problem(cfg).validation, val)
    same = build_problem(ddss.load_config(None, {"gmm": "ring2d", "steps": 3, "reference_samples": 256,
                                                 "holdout_fraction": 0.0}))
    assert same.validation is same.reference  # 0: validate against the loss's reference, as before


def test_teacher_problem_holds_out_part_of_the_training_split_and_never_reads_test(teachers, monkeypatch):
    """The loss's reference and the validation reference are the features of the two parts of the
    training split (holdout_split's rows); the test split is never loaded."""
    import pipeline.evaluation as evaluation
    from pipeline.data import loading
    from pipeline.data.digits import load_digits
    from pipeline.ddss.problem import holdout_split
    from pipeline.evaluation import pixel_features

    splits = []
    real = loading.load_data
    monkeypatch.setattr(loading, "load_data", lambda cfg, split: splits.append(split) or real(cfg, split))
    monkeypatch.setattr(evaluation, "data_features", lambda name, cache: (pixel_features, "pixels"))  # no classifier to train
    cfg = ddss.load_config(None, {"teacher": teachers["good"], "steps": 3, "holdout_fraction": 0.25})
    problem = build_problem(cfg)
    assert splits and set(splits) == {"train"}  # (loading the teacher checks its data too)
    train = np.asarray(load_digits("train")[0], np.float32).reshape(-1, 64)
    loss_rows, held_rows = holdout_split(len(train), 0.25)
    np.testing.assert_allclose(problem.reference, train[loss_rows], atol=1e-6)
    np.testing.assert_allclose(problem.validation, train[held_rows], atol=1e-6)
    assert problem.meta["teacher"] and problem.meta["features"] == "pixels"


def test_teacher_reference_is_its_own_samples_of_a_seed_no_evaluation_uses(teachers, monkeypatch, tmp_path):
    """reference "teacher": the loss's and the validation reference are the two parts of the teacher's
    own reference_steps-step DDIM samples (holdout_split's rows), drawn from a seed the evaluation's
    teacher reference does not use."""
    import pipeline.evaluation as evaluation
    from pipeline.ddss.problem import TEACHER_SAMPLES_SEED, holdout_split
    from pipeline.evaluation import pixel_features
    from pipeline.evaluation.problems import TEACHER_REFERENCE_SEED, teacher_reference_samples

    monkeypatch.setattr(evaluation, "data_features", lambda name, cache: (pixel_features, "pixels"))
    cfg = ddss.load_config(None, {"teacher": teachers["good"], "steps": 3, "reference": "teacher", "reference_steps": 4,
                                  "reference_samples": 40, "holdout_fraction": 0.25, "cache_dir": str(tmp_path)})
    problem = build_problem(cfg)
    own = teacher_reference_samples(teachers["good"], str(tmp_path), 4, 40, seed=TEACHER_SAMPLES_SEED).reshape(40, -1)
    loss_rows, held_rows = holdout_split(40, 0.25)
    np.testing.assert_allclose(problem.reference, own[loss_rows], atol=1e-6)
    np.testing.assert_allclose(problem.validation, own[held_rows], atol=1e-6)
    assert problem.meta["reference"] == "teacher" and problem.meta["reference_steps"] == 4
    evaluation_ref = teacher_reference_samples(teachers["good"], str(tmp_path), 4, 40, seed=TEACHER_REFERENCE_SEED)
    assert TEACHER_SAMPLES_SEED != TEACHER_REFERENCE_SEED and np.abs(evaluation_ref.reshape(40, -1) - own).max() > 0.1


def test_a_teacher_reference_is_refused_where_it_means_nothing():
    from pipeline.errors import UserError

    for overrides, needle in (({"gmm": "ring2d"}, "must be data with gmm"),
                              ({"teacher": "t", "guidance": 2.0}, "leave guidance unset"),
                              ({"teacher": "t", "reference": "model"}, "must be one of data, teacher")):
        with pytest.raises(UserError, match=needle):
            ddss.load_config(None, {"steps": 3, "reference": "teacher", **overrides})
