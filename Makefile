# Mailhost: `make run` starts everything with the embedded defaults, `make test` runs it all.
# Idempotent: installs happen only when pyproject.toml changed (stamp files in .venv/).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# Debian packages the test suite drives: a real browser, real mail/HTTP clients (mpop: POP3
# STLS as GnuTLS does it), and docker-compose to validate docker-compose.yml (it needs no
# Docker engine for `config`). rspamd and clamav-daemon: the real scanners the scanning tests
# start privately (tests/scanners.py; clamd is /usr/sbin/clamd, checked by path below).
# swaks needs Net::SSLeay / IO::Socket::SSL for --tls (checked separately: not commands).
SYSTEM_PACKAGES := chromium curl swaks docker-compose mpop msmtp fetchmail rspamd
PYTEST_ARGS ?=

.PHONY: run test lint pytest bench clean distclean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(RUN_STAMP)

## run: create the virtualenv if needed, install, migrate and start SMTP, POP3 and the portal
run: $(RUN_STAMP)
	$(BIN)/mailhost serve

## system-packages: install $(SYSTEM_PACKAGES) with apt-get when missing (as root)
system-packages:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do command -v $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	[ -x /usr/sbin/clamd ] || missing="$$missing clamav-daemon"; \
	perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || missing="$$missing libnet-ssleay-perl libio-socket-ssl-perl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    if command -v systemctl >/dev/null 2>&1; then \
	      systemctl disable --now rspamd clamav-daemon clamav-freshclam >/dev/null 2>&1 || true; \
	    fi; \
	  else \
	    echo "warning: missing$$missing; install with: sudo apt-get install$$missing" >&2; \
	  fi; \
	fi

## lint: ruff (lint and format check), mypy --strict, import contracts
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## pytest: the test suite only (MAILHOST_TEST_DATABASE_URL=postgresql://... for PostgreSQL)
pytest: $(TEST_STAMP) system-packages
	$(BIN)/pytest $(PYTEST_ARGS)

## test: everything: lint, types, import contracts, then the whole suite
test: lint pytest

## bench: run the benchmark scripts in bench/ (they print figures; never pass/fail on speed)
##        one of them: make bench BENCH=bench/smtp_ingest.py
BENCH ?= $(wildcard bench/*.py)
bench: $(TEST_STAMP)
	@set -e; [ -n "$(strip $(BENCH))" ] || { echo "no benchmarks in bench/"; exit 0; }; \
	for script in $(BENCH); do echo "== $$script"; $(BIN)/python "$$script"; done

## clean: remove caches and build debris (never ./var: that is your data and mail)
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

## distclean: clean, and remove the virtualenv too
distclean: clean
	rm -rf $(VENV)
