"""Orbax checkpoints: round trips, corrupt and incompatible checkpoints, the never-overwrite rules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pipeline import checkpoint
from pipeline.errors import UserError


def _state(width=4, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(3, width)), jnp.float32), "b": jnp.zeros(width)}
    opt = optax.adam(1e-3)
    return {
        "params": params,
        "ema": jax.tree.map(lambda a: a * 0.5, params),
        "opt": opt.init(params),
        "step": jnp.int32(7),
        "key": jax.random.key_data(jax.random.key(seed)),
    }


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def test_round_trip_keeps_latest_and_structure(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ck", max_to_keep=2) as ck:
        assert ck.latest_step() is None
        states = {s: _state(seed=s) for s in (1, 2, 3)}
        for s, st in states.items():
            assert ck.save(s, st)
        ck.wait()
        assert not ck.save(2, states[2])  # not newer than the latest: skipped
        assert ck.all_steps() == [2, 3]  # max_to_keep
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    got = ck.restore(_state(seed=99))
    assert _equal(got, states[3])
    assert type(got["opt"][0]) is type(states[3]["opt"][0])  # optax namedtuples come back
    assert _equal(ck.restore(_state(), step=2), states[2])


def test_restore_without_checkpoint_is_one_line(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "empty")
    with pytest.raises(UserError, match="no checkpoint in") as e:
        ck.restore(_state())
    assert "\n" not in str(e.value)


def test_incompatible_checkpoint_names_the_entry(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, _state(width=4))
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    with pytest.raises(UserError, match=r"incompatible.*'ema/b' has shape \(4,\), expected \(5,\)") as e:
        ck.restore(_state(width=5))
    assert "\n" not in str(e.value)
    other = _state()
    other["extra"] = jnp.ones(2)
    with pytest.raises(UserError, match="incompatible.*lacks 'extra'"):
        ck.restore(other)
    wrong_dtype = _state()
    wrong_dtype["step"] = jnp.float32(7)
    with pytest.raises(UserError, match="'step' has dtype int32, expected float32"):
        ck.restore(wrong_dtype)


def test_corrupt_checkpoint_is_one_line_and_not_overwritten(tmp_path):
    with checkpoint.Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, _state())
    step_dir = tmp_path / "ck" / "1"
    (step_dir / checkpoint.CHECKSUM).unlink()  # as an older run wrote it: orbax's own checks
    data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:  # garble every array chunk
        p.write_bytes(b"\x00garbage" * 3)
    before = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    with pytest.raises(UserError, match="checkpoint step 1 .* unreadable") as e:
        ck.restore(_state())
    assert "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()} == before

    (step_dir / "default" / "_METADATA").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        checkpoint.Checkpointer(tmp_path / "ck").restore(_state())


def _flip_largest_file(step_dir):
    """Flip one byte in the middle of the largest file under step_dir (an array chunk)."""
    big = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0x01
    big.write_bytes(data)


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path):
    """orbax restores a checkpoint with a flipped byte in a data file without complaint; the
    checksum of each committed step (written at the next save and at close) refuses it."""
    states = {s: _state(width=64, seed=s) for s in (1, 2)}
    with checkpoint.Checkpointer(tmp_path / "ck") as ck:
        for s, st in states.items():
            ck.save(s, st)
        assert (tmp_path / "ck" / "1" / checkpoint.CHECKSUM).is_file()  # sealed when step 2 was saved
    assert (tmp_path / "ck" / "2" / checkpoint.CHECKSUM).is_file()  # sealed at close
    assert _equal(checkpoint.Checkpointer(tmp_path / "ck").restore(_state(width=64)), states[2])
    assert _equal(checkpoint.read_subtree(tmp_path / "ck", {"ema": _state(width=64)["ema"]})["ema"], states[2]["ema"])

    _flip_largest_file(tmp_path / "ck" / "2")
    before = {p: p.read_bytes() for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    for load in (lambda: checkpoint.Checkpointer(tmp_path / "ck").restore(_state(width=64)),
                 lambda: checkpoint.read_subtree(tmp_path / "ck", {"ema": _state(width=64)["ema"]})):
        with pytest.raises(UserError, match="checkpoint step 2 .*corrupt.*checksum mismatch") as e:
            load()
        assert "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in (tmp_path / "ck").rglob("*") if p.is_file()} == before
    assert _equal(checkpoint.Checkpointer(tmp_path / "ck").restore(_state(width=64), step=1), states[1])  # untouched
    (tmp_path / "ck" / "2" / checkpoint.CHECKSUM).unlink()  # a step without a checksum loads as before
    checkpoint.Checkpointer(tmp_path / "ck").restore(_state(width=64))


def test_finite_guard_stops_at_the_first_bad_step_and_keeps_the_checkpoints(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    guard = checkpoint.FiniteGuard(ck, "training", "lr")
    guard.step(1, jnp.bool_(True), jnp.float32(0.5), now=True)
    ck.save(1, _state())
    guard.step(2, jnp.bool_(True), jnp.float32(0.4))
    guard.step(3, jnp.bool_(False), jnp.float32(np.nan))  # checked one step late...
    with pytest.raises(checkpoint.TrainingDiverged) as e:
        guard.step(4, jnp.bool_(False), jnp.float32(np.nan))
    msg = str(e.value)
    assert msg.startswith("training diverged at step 3: non-finite loss; the last good checkpoint (step 1) stays")
    assert "lower lr" in msg and isinstance(e.value, UserError)
    assert checkpoint.Checkpointer(tmp_path / "ck").all_steps() == [1]
    assert (tmp_path / "ck" / "1" / checkpoint.CHECKSUM).is_file()  # the guard closed (and sealed) the checkpointer
    guard = checkpoint.FiniteGuard(checkpoint.Checkpointer(tmp_path / "other"), "training", "lr")
    with pytest.raises(checkpoint.TrainingDiverged, match="step 7: non-finite gradient .* no checkpoint was written"):
        guard.step(7, jnp.bool_(False), jnp.float32(1.0), now=True)  # ...or at once, before a log or save
