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
