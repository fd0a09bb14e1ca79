"""The artefact table: a sampler prefix reaches its method's loader, as a picklable function."""
import pickle

import numpy as np
import pytest

from pipeline import ddss
from pipeline.app import artefacts
from pipeline.errors import UserError
from pipeline.evaluation import analytic_problem

PROBLEM = analytic_problem([[-1.0, 0.0], [1.0, 0.0]], [0.3, 0.3], [0.5, 0.5], reference_samples=50)


def test_plain_samplers_take_no_loader_and_unknown_artefacts_are_one_line():
    assert artefacts.plan_loader("ddim") is None
    with pytest.raises(UserError, match="'ddim' takes no artefact .*ggdm, student-ddim, student-stochastic"):
        artefacts.plan_loader("ddim:some/path")
    with pytest.raises(UserError, match="nothing after ':'"):
        artefacts.plan_loader("ggdm:")


def test_samplers_with_artefacts_need_one_and_it_is_checked_without_a_model(tmp_path):
    """`--sampler ggdm` without :PATH failed inside the actors, after the progress bar started."""
    for name in ("ggdm", "student-ddim", "student-stochastic"):
        with pytest.raises(UserError, match=f"^sampler '{name}' needs an artefact: {name}:PATH$"):
            artefacts.plan_loader(name)
        with pytest.raises(UserError, match="needs an artefact"):
            artefacts.check_artefact(name)
    artefacts.check_artefact("ddim")
    with pytest.raises(UserError, match="takes no artefact"):
        artefacts.check_artefact("ddim:x")
    with pytest.raises(UserError, match="is not a DDSS sampler artefact"):
        artefacts.check_artefact(f"ggdm:{tmp_path / 'none'}")
    with pytest.raises(UserError, match="holds no finished distillation round"):
        artefacts.check_artefact(f"student-stochastic:{tmp_path}")
    path = ddss.save_artefact(tmp_path / "k4", ddss.init_params(4, "ggdm", "cosine", "quadratic"), {"schedule": "cosine"})
    artefacts.check_artefact(f"ggdm:{path}")


def test_ggdm_loader_reads_the_artefact_for_the_model_and_survives_pickling(tmp_path):
    params = ddss.init_params(4, "ggdm+pred", "cosine", "quadratic")
    path = ddss.save_artefact(tmp_path / "k4", params, {"schedule": "cosine", "data_shape": [2], "guidance": 1.5})
    loader = pickle.loads(pickle.dumps(artefacts.plan_loader(f"ggdm:{path}")))
    plan = loader(PROBLEM.model())
    assert plan.steps == 4 and plan.w == 1.5 and plan.eps_fn is None
    for k, v in params.items():
        np.testing.assert_array_equal(plan.kwargs["params"][k], np.asarray(v))
    spec = artefacts.eval_spec(PROBLEM, f"ggdm:{path}", 4, 8)
    assert spec.plan is not None and spec.sampler == f"ggdm:{path}"


def test_an_artefact_made_for_another_model_is_refused(tmp_path):
    path = ddss.save_artefact(tmp_path / "k4", ddss.init_params(4, "ggdm", "linear", "quadratic"),
                              {"schedule": "linear", "data_shape": [2]})
    with pytest.raises(UserError, match="made for a model with schedule linear"):
        artefacts.plan_loader(f"ggdm:{path}")(PROBLEM.model())
    path = ddss.save_artefact(tmp_path / "img", ddss.init_params(4, "ggdm", "cosine", "quadratic"),
                              {"schedule": "cosine", "data_shape": [8, 8, 1]})
    with pytest.raises(UserError, match="data shape 8x8x1"):
        artefacts.plan_loader(f"ggdm:{path}")(PROBLEM.model())
