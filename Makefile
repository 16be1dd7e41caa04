# Two commands do all the set-up on a fresh machine with only Python on it:
#   make demo   runs the main job (the pipeline on a generated clip with the default model)
#   make test   runs the whole test suite
# Both create (or reuse) the virtual environment in .venv first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench bench-deps clean

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

# what benchmarks/tracking.py needs beyond the project: Roboflow's trackers (its ByteTrack, the
# baseline) with only the packages its ByteTrack imports (not opencv-python, which would shadow ours)
bench-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps trackers==2.6.1 supervision==0.31.2
	$(BIN)/python -m pip install --quiet pydeprecate==0.13.0 defusedxml==0.7.1 requests==2.34.2 rich==15.0.0

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
