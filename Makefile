# The two commands a new user needs: `make demo` and `make test`.
# Each creates the environment it needs when it is absent.
PYTHON ?= python3
VENV := .venv
TFGAN_VENV := .venv-tfgan
STAMP := $(VENV)/.installed
TFGAN_STAMP := $(TFGAN_VENV)/.installed
PYTEST_ARGS ?= --durations=25
# `make test` runs on two pytest-xdist workers, a module at a time (its module fixtures built once),
# the longest modules first (tests/conftest.py: FIRST); `make test XDIST=` runs it in one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
# `make test` leaves out the tests marked slow (minutes long, or costly repeats of cheaper tests);
# `make test-slow` runs them.
SLOW_ARGS ?= -m slow

.PHONY: demo test test-slow venv tfgan-venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

# tensorflow-gan needs TensorFlow <= 2.15 and NumPy < 2, which cannot live beside JAX:
# it gets its own interpreter, used by Ray actors through runtime_env py_executable.
tfgan-venv: $(TFGAN_STAMP)

$(TFGAN_STAMP): requirements-tfgan.txt
	test -x $(TFGAN_VENV)/bin/python || $(PYTHON) -m venv $(TFGAN_VENV)
	$(TFGAN_VENV)/bin/pip install -q --upgrade pip
	$(TFGAN_VENV)/bin/pip install -q -r requirements-tfgan.txt
	touch $(TFGAN_STAMP)

demo: $(STAMP)
	$(VENV)/bin/ddss demo

test: $(STAMP) $(TFGAN_STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-slow: $(STAMP) $(TFGAN_STAMP)
	$(VENV)/bin/python -m pytest $(SLOW_ARGS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TFGAN_VENV) runs .cache
