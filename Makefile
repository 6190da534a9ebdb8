# editguard: `make demo` runs the whole pipeline on the CPU; `make test` runs the test suite.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.editguard-installed
DEMO   ?= demo
# torch comes first and pinned: left to a dependency, pip would pick a newer release. From PyPI it is the
# CUDA build (about 4 GB of CUDA libraries, even on a CPU-only machine); PyTorch's CPU index avoids that:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH  := torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=

# the review page's tests drive Debian's chromium through chromedriver; the deployment's tests render the
# Kustomize base with kubectl (Debian's kubernetes-client, where no kubectl is on PATH). Both need root.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# the deployment checkers, in a venv of their own (their pinned dependencies would fight the project's)
TOOLS  := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: install browser kubectl tools demo test test-fast clean help

help:
	@echo "make demo       synth -> train -> evaluate -> export -> serve -> score -> calibrate -> review, on the CPU"
	@echo "make test       the whole test suite, as CI runs it (creates .venv first if needed)"
	@echo "make test-fast  the edit-test loop: no Triton, no training, no browser (under a minute)"
	@echo "make clean      remove demo outputs"
	@echo "(make test also installs chromium, kubectl and the deployment checkers checkov and kubernetes-validate)"

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ) || \
	  echo "make: could not install chromium and chromium-driver (apt-get); the browser tests will be skipped"

kubectl:
	@command -v kubectl >/dev/null || \
	  ( $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null ) || \
	  echo "make: could not install kubernetes-client (apt-get); the Kustomize rendering test will be skipped"

$(TOOLS_STAMP):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q checkov kubernetes-validate
	touch $@

tools: $(TOOLS_STAMP)

test: $(STAMP) browser kubectl tools
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not soak"

demo: $(STAMP)
	$(BIN)/python -m scripts.demo --out $(DEMO)

clean:
	rm -rf $(DEMO)
