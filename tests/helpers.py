"""Checks several test files share (imported as `helpers`: pytest puts tests/ on sys.path)."""
import jax


def model_calls(name, eps_fn, sched, x_T, K, **kw) -> int:
    """How many times samplers.sample(name, ...) evaluates eps_fn, counted at run time."""
    from pipeline import samplers

    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return eps_fn(x, t)

    jax.block_until_ready(samplers.sample(name, counted, sched, x_T, K, key=jax.random.key(0), **kw))
    jax.effects_barrier()
    return len(calls)


def one_line_exit_2(argv, capsys, *needles) -> str:
    """cli.main(argv) exits 2 with one line on stderr (no traceback) holding every needle."""
    from pipeline import cli

    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err
