# etcdproof: `make test` and `make demo` set everything up on a fresh Debian 12 machine
# (apt packages as root or through sudo, a venv in .venv) and are quick when already set up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
# sudo: the tests of the SSH path for a non-root login user (sudo -n), as on vagrant VMs; chromium: the reports' headless browser test (tests/test_report_browser.py)
APT_PKGS := python3-venv etcd-server etcd-client fio openssh-server iptables iproute2 faketime fuse3 fdisk curl nghttp2-client sudo chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOS := $(shell find server/proto -name '*.proto')
STAMP := $(VENV)/.installed

.PHONY: deps system-deps test test-slow demo bench clean

system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
		if [[ "$$missing" == *etcd-server* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
			$(SUDO) systemctl disable --now etcd >/dev/null 2>&1 || true; \
		fi; \
	fi

# the editable install compiles server/proto/**/*.proto into stubs (setup.py); never committed
$(STAMP): pyproject.toml setup.py $(PROTOS)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[harness,test]'
	touch $@

deps: system-deps $(STAMP)

test: deps
	$(VENV)/bin/pytest -m "not slow" --durations=25

# long soak and benchmark-like tests; exit code 5 means none are marked slow yet
test-slow: deps
	$(VENV)/bin/pytest -m slow || [ $$? -eq 5 ]

demo: deps
	$(VENV)/bin/python -m harness.demo

bench: deps
	$(VENV)/bin/python -m bench kv --db both

clean:
	rm -rf $(VENV) build dist *.egg-info
	find . -name '*_pb2*.py*' -path './server/proto/*' -delete
