# Two commands work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install gpu-faiss clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"  # dev: pytest, and matplotlib and datasets (the plots and hf extras)
	touch $(STAMP)

install: $(STAMP)

# FAISS on the GPU (Linux x86_64, CUDA 12): faiss-gpu-cu12 replaces faiss-cpu, since both install the
# `faiss` module (see pyproject.toml). A later reinstall brings faiss-cpu back; plural then says so.
gpu-faiss: $(STAMP)
	$(BIN)/python -m pip uninstall --quiet -y faiss-cpu
	$(BIN)/python -m pip install --quiet "faiss-gpu-cu12>=1.8"

demo: $(STAMP)
	$(BIN)/plural demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .plural_cache
