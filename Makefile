# Two commands do all the set-up on a fresh machine with only Python on it:
#   make demo   runs the main job (the pipeline on a generated clip with the default model)
#   make test   runs the whole test suite
# Both create (or reuse) the virtual environment in .venv first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# TrackEval, for the tracking figures: its metrics need only numpy and scipy, while its declared
	# opencv-python would shadow our opencv-python-headless (streamseg.tools.tracking_eval)
	$(BIN)/python -m pip install --quiet --no-deps trackeval==1.3.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_efficiency.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
