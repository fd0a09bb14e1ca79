"""The sampler registry: register/get/names/nfe, the entry points run/sample on a toy sampler,
unknown names, a full registry after `import pipeline.samplers`, and a registry module that
imports no sampler family."""
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import samplers
from pipeline.errors import UserError
from pipeline.samplers import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL = ["accel-ddim", "accel-ddpm", "ddim", "ddpm", "dpm-solver++2m", "dpm-solver++3m", "ggdm", "ipndm", "student-ddim",
       "student-stochastic", "unipc-2", "unipc-3"]
FAMILIES = ["pipeline.samplers." + m for m in ("baseline", "accel", "ggdm", "multistep", "student")]


@pytest.fixture
def toy(monkeypatch):
    """A sampler "toy" registered into a copy of the registry (restored afterwards):
    x <- x * (1 + s - t) at each step, 2 model evaluations per step."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register("toy", nfe=lambda k: 2 * k, stochastic=False)
    def toy_run(eps_fn, sched, x_T, grid, key=None, scale=1.0):
        """A toy chain.

        More text that is not the summary."""
        state, bad = samplers.scan_chain(lambda st, i, t, s: {"x": st["x"] * (1 + scale * (s - t))}, {"x": x_T}, grid)
        return state["x"], bad

    return toy_run


def test_register_get_names_nfe(toy):
    s = registry.get("toy")
    assert (s.name, s.run, s.stochastic, s.doc) == ("toy", toy, False, "A toy chain.")
    assert registry.names() == sorted(ALL + ["toy"])
    assert samplers.nfe("toy", 5) == 10
    assert samplers.nfe("ddim", 7) == 7


def test_run_and_sample_call_the_registered_sampler(toy):
    grid = np.array([1.0, 0.5, 0.0])
    x_T = jnp.ones((3, 2))
    expected = np.ones((3, 2)) * 0.5 * 0.5
    x0, bad = samplers.run("toy", None, "cosine", x_T, grid)
    np.testing.assert_allclose(np.asarray(x0), expected, rtol=1e-6)
    assert int(bad) == 0
    out = samplers.sample("toy", None, "cosine", x_T, 2, grid=grid)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)
    out = samplers.sample("toy", None, "cosine", x_T, 2, grid=grid, scale=jnp.asarray(0.0))  # array kwarg: traced
    np.testing.assert_allclose(np.asarray(out), np.ones((3, 2)), rtol=1e-6)


def test_sample_reports_divergence_and_bad_grids(toy):
    x_T = jnp.ones((2, 1))
    with pytest.raises(samplers.SamplerDiverged, match=r"sampler 'toy' .* at step 1 of 2"):
        samplers.sample("toy", None, "cosine", x_T, 2, grid=np.array([1.0, 0.0, 0.0]), scale=jnp.inf)
    with pytest.raises(UserError, match=r"steps\+1 = 3"):
        samplers.sample("toy", None, "cosine", x_T, 2, grid=np.array([1.0, 0.0]))


def test_unknown_name_is_a_user_error_listing_the_names():
    for call in (lambda: samplers.get("nope"), lambda: samplers.nfe("nope", 4),
                 lambda: samplers.sample("nope", None, "cosine", jnp.ones((1, 1)), 4)):
        with pytest.raises(UserError, match="unknown sampler 'nope'") as e:
            call()
        for name in ALL:
            assert name in str(e.value)


def test_nfe_validates_steps():
    with pytest.raises(UserError):
        samplers.nfe("ddim", 0)


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_registry_is_complete_after_importing_the_package():
    assert samplers.names() == ALL
    assert _python("from pipeline.samplers import registry; print(registry.names())") == repr(ALL)


def test_registry_module_alone_imports_no_sampler_family():
    """Importing `pipeline.samplers.registry` runs the package's __init__ (which imports the
    families), so the module file is loaded on its own to see what *it* imports."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('registry_alone', 'pipeline/samplers/registry.py')\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['registry_alone'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.samplers')), mod.names())\n"
    )
    assert _python(code) == "[] []"
    imported = _python("import sys, pipeline.samplers.registry; print(sorted(sys.modules))")
    for family in FAMILIES:  # ...and the package import fills it
        assert repr(family) in imported
