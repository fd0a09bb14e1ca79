"""The distilled student (pipeline/distill/student.py): loaded from its round, it samples with
both student samplers and differs from the round before."""
import jax
import jax.numpy as jnp
import numpy as np

from pipeline import samplers
from pipeline.distill.student import load_student_params


def test_the_round_1_student_samples_and_moved_from_its_teacher(until_2):
    _, root, _ = until_2  # rounds 0 and 1 of a 4-step schedule
    from pipeline.distill.student import load_student

    st = load_student(str(root))
    assert st.round == 1 and st.steps == 2 and st.grid[0] < 1.0
    x_T = jax.random.normal(jax.random.key(0), (8,) + st.data_shape, jnp.float32)
    for name in ("student-ddim", "student-stochastic"):
        x0 = samplers.sample(name, st.eps_fn(jnp.arange(8) % 10, 2.0), st.schedule, x_T, st.steps, key=jax.random.key(1),
                             grid=st.grid)
        assert np.all(np.isfinite(np.asarray(x0)))
    # the round-1 student moved away from its teacher (round 0's student)
    r0 = load_student_params(str(root), 0, st.params)
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), st.params, r0))
    assert max(diff) > 0


def test_rounds_are_addressed_by_their_step_count(until_2, tmp_path):
    """ROOT@STEPS is the finished round whose student takes STEPS steps (round r of a 4-step chain
    has 4 / 2^r); a step count no finished round has is one line listing the finished ones."""
    import pytest

    from pipeline.distill.student import _round_dir, load_student
    from pipeline.errors import UserError

    _, root, _ = until_2  # rounds 0 (4 steps) and 1 (2 steps)
    assert _round_dir(f"{root}@4") == str(root / "round-00")
    assert _round_dir(f"{root}@2") == str(root / "round-01")
    assert _round_dir(str(root)) == str(root / "round-01")  # the last finished round
    assert _round_dir(str(root / "round-00")) == str(root / "round-00")
    st = load_student(f"{root}@4")
    assert (st.round, st.steps) == (0, 4)
    with pytest.raises(UserError) as e:
        _round_dir(f"{root}@1")
    msg = str(e.value)
    assert "\n" not in msg and "no finished 1-step student" in msg
    assert f"{root}@4 (round 0)" in msg and f"{root}@2 (round 1)" in msg
    with pytest.raises(UserError, match="holds no finished distillation round"):
        _round_dir(f"{tmp_path}@4")
