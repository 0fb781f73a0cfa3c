# The two commands of the README: `make test` and `make book`. Each creates
# .venv and installs the exact pins of requirements-lock.txt when the venv is
# missing or older than the lock or pyproject.toml, then does its job.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

export TQDM_DISABLE ?= 1
export PYTHONHASHSEED := 0
# The site and the tests never reach a model hub; everything ships in packages.
export HF_HUB_OFFLINE := 1

.PHONY: test book site execute bench lock clean

# --no-deps: the lock is complete (every transitive pin), so nothing is resolved
# again. This also keeps tinysoundfont from pulling pyaudio (live playback only).
$(STAMP): requirements-lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check | grep -v -i pyaudio || true
	@touch $(STAMP)

## test: unit tests, every chapter under nbval (profile ci), and the site built with warnings as errors
test: $(STAMP) site
	MUSICDIFF_PROFILE=ci $(BIN)/python -m pytest -p no:cacheprovider \
		--nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg tests $(NOTEBOOKS)

## book: build the HTML site into _build/html from the committed notebook outputs
book: site
	@echo "The book is in _build/html/index.html"

site: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going --quiet

## execute: re-run every chapter with the book profile so committed outputs match the code
execute: $(STAMP)
	for nb in $(NOTEBOOKS); do \
		MUSICDIFF_PROFILE=book $(BIN)/jupyter execute --inplace --timeout=1800 $$nb || exit 1; \
	done
	$(BIN)/python book/clean_notebooks.py $(NOTEBOOKS)

## bench: speed benchmarks, printed as tables (the full U-Net one, with seed128: benchmarks/bench_unet.py)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_audio.py
	$(BIN)/python benchmarks/bench_unet.py --quick
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py

## lock: re-pin requirements-lock.txt from the current venv
lock:
	{ echo "# Exact pins for make/CI, installed with --no-deps: regenerate with 'make lock'."; \
	  echo "# torch is the CPU build (2.13.0+cpu on this machine's disk); Colab keeps its own CUDA torch."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --disable-pip-version-check \
		| grep -v -E '^(pip|musicdiff_lib)==' | sed -e 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; \
	} > requirements-lock.txt

clean:
	rm -rf _build .pytest_cache
