# Each target creates its own virtual environment and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-unit test-integration demo lint unit integration mosquitto deploy-tools clean \
	dist node-red ha-venv ha-test tahu

# Node-RED is no dependency of the project: `make node-red` installs it from npm here.
NODE_RED_DIR     ?= $(HOME)/.cache/modbus-bridge/node-red
NODE_RED_VERSION ?= 4
# Eclipse Tahu's Sparkplug B library decodes what the bridge publishes in the Sparkplug
# tests (tests/sparkplug_host.py): an implementation other than the bridge's encoder.
TAHU_HOME        ?= $(HOME)/.cache/modbus-bridge/tahu
TAHU_VERSION     ?= 1.0.3

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Tests start their own Mosquitto; install the binary where it is missing. socat makes
# the virtual null-modem cables of the serial tests; mbpoll is the Modbus client we did
# not write in the proxy's proof (tests/integration/test_proxy_proof.py).
mosquitto:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; \
	fi
	@command -v openssl >/dev/null || { apt-get update -q && apt-get install -y -q openssl; }
	@command -v socat >/dev/null || { apt-get update -q && apt-get install -y -q socat; }
	@command -v mbpoll >/dev/null || { apt-get update -q && apt-get install -y -q mbpoll; }

# The Sparkplug tests' decoder: node (Debian's nodejs) and npm's sparkplug-payload.
tahu:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	@test -d $(TAHU_HOME)/node_modules/sparkplug-payload || \
		npm install --prefix $(TAHU_HOME) --no-audit --no-fund sparkplug-payload@$(TAHU_VERSION)

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

# The unit tier opens no socket and starts no process (tests/unit/conftest.py fails a test
# that does): about 2 minutes of one core (half of it property tests and configuration
# fuzzing), nothing to install beyond the venv.
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test-integration: $(STAMP) mosquitto tahu
	$(PY) -m pytest tests/integration -q -n 2 --dist loadgroup

unit: test-unit
integration: test-integration

# The real Home Assistant test is slow and needs its own venv: `make ha-test`, not here.
# Two workers (pytest-xdist): most integration tests wait on sockets and timers, so the
# suite takes about half the time; tests/deploy stays on one worker (see its conftest).
test: $(STAMP) mosquitto deploy-tools tahu lint
	$(PY) -m pytest -q -n 2 --dist loadgroup --ignore=tests/homeassistant

# Home Assistant Core for tests/homeassistant, in a venv OUTSIDE the repository (~600 MB,
# ~3.5 min): make ha-venv HA_VENV=/work/ha-venv. Python 3.13.0 installs at most 2025.4.4;
# paho-mqtt, the frontend and pymodbus (its modbus integration, for tests/homeassistant/
# test_import.py) at the versions its manifests pin, or it installs them at start.
# A newer release: make ha-venv HA_VENV=/work/ha-venv-2025.11 HA_VERSION=2025.11.3 (it asks
# for Python 3.13.2; installed anyway, with pycares<5 for its aiodns, and allow_python.py
# relaxes the version check of that venv's copy so that it starts on 3.13.0).
# A pyenv shim named python3.13 fails unless a 3.13 is selected: use the version's own
# interpreter when pyenv has one, or say HA_PY313=/path/to/python3.13.
HA_PY313 ?= $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.13.*/bin/python3.13))),python3.13)
HA_VERSION ?= 2025.4.4
HA_PINS_2025.4.4 := paho-mqtt==2.1.0 home-assistant-frontend==20250411.0 pymodbus==3.8.3
HA_PINS_2025.11.3 := --ignore-requires-python paho-mqtt==2.1.0 \
	home-assistant-frontend==20251105.1 'pycares<5' pymodbus==3.11.2
ha-venv:
	@test -n "$(HA_VENV)" || { echo "usage: make ha-venv HA_VENV=/path/outside/the/repo [HA_VERSION=2025.11.3]"; exit 2; }
	@test -n "$(HA_PINS_$(HA_VERSION))" || { echo "HA_VERSION: 2025.4.4 or 2025.11.3 (the releases tried)"; exit 2; }
	$(HA_PY313) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install -q homeassistant==$(HA_VERSION) $(HA_PINS_$(HA_VERSION))
	$(HA_VENV)/bin/python tests/homeassistant/allow_python.py

# A real Home Assistant against the real bridge: make ha-test HA_PYTHON=/work/ha-venv/bin/python
# (or HA_PYTHON=/work/ha-venv-2025.11/bin/python for the newer release)
HA_PYTHON ?= $(BRIDGE_HA_PYTHON)
ha-test: $(STAMP) mosquitto
	@test -n "$(HA_PYTHON)" || { echo "usage: make ha-test HA_PYTHON=<ha venv>/bin/python (see make ha-venv)"; exit 2; }
	BRIDGE_HA_PYTHON=$(HA_PYTHON) $(PY) -m pytest tests/homeassistant -v -s

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
