# Georeg developer entry points.  `make setup` is idempotent: each step leaves a
# stamp file in $(VENV)/ and is skipped while that stamp is newer than its inputs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

PYTHON_SYS  ?= /usr/bin/python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
DEMO        ?= demo.gpkg
DEMO_SOURCE ?= Sierra Leone (DHIS2 demo)
DEMO_USER   ?= collector
PORT        ?= 8080
PYTEST_ARGS ?=
BENCH       ?= benchmarks/run_all.py
BENCH_ARGS  ?=

# root runs apt directly; anyone else goes through sudo when it exists.
SUDO := $(shell if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# Same names on Debian 12 and 13.  The PostGIS *server* package is versioned
# (postgresql-15-postgis-3 on 12, postgresql-17-postgis-3 on 13) and the `postgis`
# package only Recommends it, so it is added explicitly below.
APT_PACKAGES := libsqlite3-mod-spatialite gdal-bin python3-gdal postgresql postgis \
                python3-qgis qgis-providers xvfb python3-venv python3-pip sqlite3 \
                python3-pyproj python3-dev build-essential libgdal-dev libgeos-dev \
                default-jdk-headless chromium chromium-driver

APT_STAMP   := $(VENV)/.stamp-apt
VENV_STAMP  := $(VENV)/.stamp-venv
PIP_STAMP   := $(VENV)/.stamp-pip
CONSTRAINTS := $(VENV)/constraints.txt

.PHONY: setup run demo-reset test lint bench clean distclean

setup: $(PIP_STAMP)

# --- 1. system packages ------------------------------------------------------
$(APT_STAMP): Makefile
	mkdir -p $(VENV)
	$(APT_GET) update
	pg=$$(apt-cache depends postgresql 2>/dev/null \
	      | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$$/\1/p' | head -n1); \
	extra=""; if [ -n "$$pg" ]; then extra="postgresql-$$pg-postgis-3"; fi; \
	$(APT_GET) install -y --no-install-recommends $(APT_PACKAGES) $$extra; \
	if [ -z "$$pg" ]; then \
	  pg=$$(ls /usr/lib/postgresql | sort -n | tail -n1); \
	  $(APT_GET) install -y --no-install-recommends "postgresql-$$pg-postgis-3"; \
	fi; \
	test -f "/usr/share/postgresql/$$pg/extension/postgis.control" \
	  || { echo "PostGIS extension for PostgreSQL $$pg missing" >&2; exit 1; }
	touch $@

# --- 2. virtualenv (sees Debian's python3-gdal / python3-qgis) -------------
$(VENV_STAMP): $(APT_STAMP)
	want=$$($(PYTHON_SYS) -c 'import sys; print(sys.version_info[:2])'); \
	have=$$($(PY) -c 'import sys; print(sys.version_info[:2])' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then \
	  $(PYTHON_SYS) -m venv --clear --system-site-packages $(VENV); \
	  touch $(APT_STAMP); \
	else \
	  $(PYTHON_SYS) -m venv --system-site-packages $(VENV); \
	fi
	# Debian's python3-pyproj looks for proj.db under sys.prefix, i.e. the venv.
	if [ -f /usr/share/proj/proj.db ] && [ ! -e $(VENV)/share/proj ]; then \
	  mkdir -p $(VENV)/share && ln -sfn /usr/share/proj $(VENV)/share/proj; \
	fi
	touch $@

# One GEOS, one PROJ, one GDAL and one SQLite per process: SpatiaLite (loaded by
# SQLite with RTLD_GLOBAL), Debian's GDAL and QGIS use the system libraries, so the
# Python packages must too.  Wheels that bundle their own copies (shapely, pyogrio,
# pyproj) crash at exit or call the wrong GEOS when mixed with them.  So shapely and
# pyogrio are built from source against the system libraries, and pyproj is Debian's.
NO_BINARY := shapely,pyogrio

# numpy rule: the venv may only hold a numpy of the same major version as the
# system numpy that Debian's GDAL/QGIS/scipy bindings were compiled against, and
# not older than it (numpy's C ABI is forward compatible within a major series
# only).  Debian 12: system 1.24 -> "numpy>=1.24.2,<2"; Debian 13: 2.x -> "<3".
$(CONSTRAINTS): $(VENV_STAMP)
	v=$$($(PYTHON_SYS) -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true); \
	if [ -n "$$v" ]; then \
	  echo "numpy>=$$v,<$$(( $${v%%.*} + 1 ))" > $@; \
	else \
	  : > $@; \
	fi; \
	p=$$($(PYTHON_SYS) -c 'import pyproj; print(pyproj.__version__)'); \
	echo "pyproj==$$p" >> $@
	echo "pip constraints: $$(cat $@)"

# --- 3. the project itself --------------------------------------------------
$(PIP_STAMP): $(VENV_STAMP) $(CONSTRAINTS) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --no-binary $(NO_BINARY) -e '.[dev]'
	$(PY) -c 'from osgeo import gdal, ogr, gdal_array; import numpy, shapely, pyogrio; \
	          print("gdal", gdal.__version__, "numpy", numpy.__version__, "shapely", shapely.__version__)'
	QT_QPA_PLATFORM=offscreen $(PY) -c 'from qgis.core import Qgis; print("qgis", Qgis.QGIS_VERSION)'
	touch $@

# --- everyday targets -------------------------------------------------------
# The demo registry, a demo form that picks a Sierra Leone facility, a collector with
# a generated password, then the LAN server (Ctrl-C stops it).  A second `make run`
# keeps $(DEMO) and everything done in it since (drafts, links, users, submissions):
# the registry is built only when missing, `forms add` leaves a form already there
# unchanged, and an existing collector keeps its password.  `make demo-reset`
# starts over.
run: setup
	@if [ -e "$(DEMO)" ]; then \
	  echo "Keeping $(DEMO) and the work in it (to start over: make demo-reset)."; \
	else \
	  echo "$(VENV)/bin/georeg demo $(DEMO)"; \
	  $(VENV)/bin/georeg demo $(DEMO); \
	fi
	$(VENV)/bin/georeg tree $(DEMO) --source "$(DEMO_SOURCE)" --max-depth 2
	$(VENV)/bin/georeg forms add $(DEMO) georeg/demo_data/forms/facility_visit.xlsx \
	  --org-unit-field facility
	@if $(VENV)/bin/georeg users list $(DEMO) --json | $(PY) -c 'import json, sys; \
	    sys.exit(0 if any(u["name"] == "$(DEMO_USER)" for u in json.load(sys.stdin)) else 1)'; then \
	  echo; echo "Demo collector: $(DEMO_USER)   (already there: its password is the one shown"; \
	  echo "  the first time; a new one: $(VENV)/bin/georeg users password $(DEMO) $(DEMO_USER) --generate)"; \
	else \
	  pw=$$($(VENV)/bin/georeg users add $(DEMO) $(DEMO_USER) --role collector --generate --json \
	        | $(PY) -c 'import json, sys; print(json.load(sys.stdin)["password"])'); \
	  echo; echo "Demo collector: $(DEMO_USER)   password: $$pw   (shown once; note it now)"; \
	fi; echo
	$(VENV)/bin/georeg serve $(DEMO) --port $(PORT) --user $(DEMO_USER) --qr-png demo-qr.png

# Start the demo over: a fresh $(DEMO) (everything done in the old one is lost).
# `make run` then adds the form and a collector again.
demo-reset: setup
	rm -f $(DEMO) $(DEMO)-journal $(DEMO)-wal $(DEMO)-shm demo-qr.png
	$(VENV)/bin/georeg demo $(DEMO)

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	mkdir -p benchmarks/out
	QT_QPA_PLATFORM=offscreen $(PY) $(BENCH) $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache benchmarks/out
	rm -f $(DEMO) $(DEMO)-journal $(DEMO)-wal $(DEMO)-shm
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
