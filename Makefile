# Each target creates its own virtual environment and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint unit integration mosquitto deploy-tools clean dist node-red

# Node-RED is no dependency of the project: `make node-red` installs it from npm here.
NODE_RED_DIR     ?= $(HOME)/.cache/modbus-bridge/node-red
NODE_RED_VERSION ?= 4

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Tests start their own Mosquitto; install the binary where it is missing. socat makes
# the virtual null-modem cables of the serial tests.
mosquitto:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; \
	fi
	@command -v openssl >/dev/null || { apt-get update -q && apt-get install -y -q openssl; }
	@command -v socat >/dev/null || { apt-get update -q && apt-get install -y -q socat; }

# tests/deploy: systemd-analyze and systemctl (package systemd) and shellcheck.
deploy-tools:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check bridge tests bench
	$(VENV)/bin/ruff format --check bridge tests bench
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: $(STAMP) mosquitto
	$(PY) -m pytest tests/integration -q

test: $(STAMP) mosquitto deploy-tools lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m pip install -q -e '.[demo]'
	$(VENV)/bin/modbus-bridge demo

dist: $(STAMP)
	$(PY) -m build --outdir dist .

# deploy/node-red/flows.json in a real Node-RED against the bridge, Mosquitto and a
# simulated device (tests/integration/test_node_red.py; skipped by `make test`).
node-red: $(STAMP) mosquitto
	@command -v npm >/dev/null || { echo "need Node.js 18+ and npm"; exit 1; }
	@test -f $(NODE_RED_DIR)/node_modules/node-red/red.js || \
		npm install --prefix $(NODE_RED_DIR) --no-audit --no-fund node-red@$(NODE_RED_VERSION)
	NODE_RED_HOME=$(NODE_RED_DIR) $(PY) -m pytest tests/integration/test_node_red.py -v -s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
