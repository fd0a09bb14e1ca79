"""The one sample-index convention and what an EvalSpec accepts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.problems import Problem
from pipeline.evaluation.spec import EvalSpec, ranges, sample_inputs, split_sampler


def test_sample_i_depends_on_key_and_i_only():
    key = jax.random.key(7)
    idx = jnp.arange(10, 16, dtype=jnp.int32)
    x_T, kn, y = sample_inputs(key, idx, (3, 2), 4)
    for row, i in enumerate(range(10, 16)):
        k = jax.random.fold_in(key, i)
        np.testing.assert_array_equal(x_T[row], jax.random.normal(jax.random.fold_in(k, 0), (3, 2)))
        np.testing.assert_array_equal(jax.random.key_data(kn[row]), jax.random.key_data(jax.random.fold_in(k, 1)))
    np.testing.assert_array_equal(y, np.arange(10, 16) % 4)
    # the same index in another batch gives the same draws
    x2, _, _ = sample_inputs(key, jnp.array([13], jnp.int32), (3, 2), 4)
    np.testing.assert_array_equal(x2[0], x_T[3])
    assert sample_inputs(key, idx, (3, 2), 0)[2] is None


def test_split_sampler_and_spec_validation():
    assert split_sampler("ddim") == ("ddim", None)
    assert split_sampler("ggdm:a/b:c") == ("ggdm", "a/b:c")
    with pytest.raises(UserError, match="nothing after ':'"):
        split_sampler("ggdm:")
    p = Problem(model=lambda: None)
    for kw, match in [({"steps": 0}, "--steps"), ({"num_samples": 1}, "--num-samples"),
                      ({"batch_size": 0}, "batch size"), ({"kid_samples": 1}, "kid_samples"),
                      ({"t_max": 0.0}, r"t_max must be a number in \(0, 1\], got 0.0"), ({"t_max": 1.01}, "t_max"),
                      ({"t_max": float("nan")}, "t_max"), ({"clip_x0": "no"}, "clip_x0 must be true or false")]:
        args = {"steps": 4, "num_samples": 10, **kw}
        with pytest.raises(UserError, match=match) as e:
            EvalSpec(p, "ddim", args.pop("steps"), args.pop("num_samples"), **args).validate()
        assert "\n" not in str(e.value)
    s = EvalSpec(p, "ddim", 4, 10).validate()
    assert (s.stride, s.t_max, s.clip_x0) == ("quadratic", 1.0, True)  # the defaults: the grids and clipping of before
    assert EvalSpec(p, "ddim", 4, 10, t_max=0.5, clip_x0=False).validate().t_max == 0.5


def test_blocks_cover_every_index_once():
    s = EvalSpec(Problem(model=lambda: None), "ddim", 4, 23, batch_size=5, kid_samples=12)
    assert s.num_blocks == 5 and s.num_kid == 12 and s.block_range(4) == (20, 23)
    for per in (1, 2, 3, 7):
        units = ranges(s, per)
        covered = [i for b0, b1 in units for b in range(b0, b1) for i in range(*s.block_range(b))]
        assert covered == list(range(23))
