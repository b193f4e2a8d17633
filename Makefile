# SendGuard — two commands for a newcomer: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
ARTIFACTS ?= test-artifacts
PYTEST_WORKERS ?= 2

# Debian packages: the Qt/WebEngine runtime and CJK fonts for the window (run), plus a virtual
# display, a browser, image tools and PostgreSQL for the test suite, and the installer tools
# (wixl/msiinfo build and read the MSI, osslsigncode signs it, python3-venv for the .deb's postinst).
RUN_APT := libnss3 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
           libxcb-render-util0 libxcb-image0 libxcomposite1 libxdamage1 libxrandr2 libxtst6 libasound2 \
           libegl1 libgl1 libopengl0 fonts-noto-cjk
TEST_APT := $(RUN_APT) xvfb xauth xdotool imagemagick chromium postgresql nodejs npm \
            wixl msitools osslsigncode python3-venv

.PHONY: run test bench lint setup setup-run system-deps-run system-deps-test js-deps clean

setup-run: system-deps-run $(RUN_STAMP)
setup: system-deps-test $(STAMP) js-deps

system-deps-run:
	@tools/ensure-system-deps.sh $(RUN_APT)

system-deps-test:
	@tools/ensure-system-deps.sh $(TEST_APT)

# `make run` gets the runtime only (the helper and its window); the dev tools come with `make test`.
$(RUN_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[desktop]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[desktop,dev]'
	touch $(STAMP)

js-deps: tests/js/node_modules/.installed

tests/js/node_modules/.installed: tests/js/package.json
	cd tests/js && npm install --no-audit --no-fund --loglevel=error
	touch $@

## Start the helper on embedded defaults (SQLite, SMTP on 127.0.0.1:1587, Maildir sink).
run: setup-run
	$(PY) -m sendguard serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

## The whole suite: lint, architecture contract, Python tests (Xvfb + PostgreSQL), add-in JS tests.
test: setup lint
	mkdir -p $(ARTIFACTS)
	cd tests/js && node --test
	tools/with-postgres.sh xvfb-run -a -s "-screen 0 1600x1200x24" \
	    $(PY) -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider -q -rfEs --junitxml=$(ARTIFACTS)/junit.xml; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite itself is broken" >&2; exit 1; fi; \
	exit $$rc

bench: setup
	mkdir -p bench/results
	tools/with-postgres.sh xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) -m bench

clean:
	rm -rf $(VENV) tests/js/node_modules $(ARTIFACTS) bench/results
