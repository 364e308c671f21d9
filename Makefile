# orchard: `make up` runs the whole system on a simulated orchard; `make test` proves it.
# Both install what they need first (Debian packages as root, then a project-local venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
APT_PACKAGES := mosquitto mosquitto-clients influxdb chromium postgresql
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: up test lint bench deps system-deps python-deps format lock schemas dashboards clean

up: deps
	$(PY) -m orchard up

test: deps
	$(PY) -m pytest

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy orchard control ingest api firmware_sim dashboards

bench: deps
	$(PY) -m orchard bench all

format: python-deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

deps: system-deps python-deps

# Debian packages: the real broker, the real InfluxDB, PostgreSQL (the compose state
# store, proven in tests), Chromium for the UI test.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_passwd >/dev/null 2>&1 || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" -ne 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

python-deps: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Re-pin dependencies after editing pyproject.toml.
lock: python-deps
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

# Regenerate committed artefacts (tests fail when these drift).
schemas: python-deps
	$(PY) -m orchard schemas --write

dashboards: python-deps
	$(PY) -m orchard dashboards build

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
