# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use with the CPU torch pin; GPU users install the package into
# their own environment instead (pip install -e .), keeping their CUDA torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.swd-installed

.PHONY: setup demo test clean-venv

$(STAMP): pyproject.toml scripts/install_data_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,data,app]'
	PYTHON=$(PY) bash scripts/install_data_deps.sh
	@# Debian's chromium + driver for the browser test of `swd app`; without apt or root it is skipped.
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium: present"; \
	elif ! command -v apt-get >/dev/null; then echo "warning: no apt-get: the browser test will be skipped" >&2; \
	else S=""; [ "$$(id -u)" -eq 0 ] || S="sudo -n"; \
	  { $$S apt-get update -q && DEBIAN_FRONTEND=noninteractive timeout 600 $$S apt-get install -y -q \
	    --no-install-recommends chromium chromium-driver; } >/dev/null \
	  || echo "warning: could not install chromium; the browser test will be skipped" >&2; fi
	touch $(STAMP)

setup: $(STAMP)

# The emoji set (~30 s to render offline); the evaluation tests score against it.
EMOJI_SET := .cache/swd/emoji-64.npz
$(EMOJI_SET): | $(STAMP)
	$(VENV)/bin/swd data build emoji

demo: $(STAMP)
	$(VENV)/bin/swd demo --out demo.png

test: $(STAMP) $(EMOJI_SET)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
