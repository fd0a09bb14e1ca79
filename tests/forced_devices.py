"""Running a test module's function in a fresh Python whose JAX sees n CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=n is only read when jax is first imported)."""
import json
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def xla_flags(n: int) -> str:
    """XLA_FLAGS (the environment's, if any, then the flag) that make JAX's CPU platform show n devices:
    for a subprocess here or a Ray worker (run_spmd's worker_env={"XLA_FLAGS": xla_flags(n)})."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def call_with_devices(n: int, module: str, function: str, *args, timeout: float = 300):
    """json.loads of the JSON that tests/<module>.py's function(*args) returns, run with n devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])),
               XLA_FLAGS=xla_flags(n))
    code = f"import json, sys, {module}; print(json.dumps({module}.{function}(*json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, cwd=os.path.dirname(TESTS),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
