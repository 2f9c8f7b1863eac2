# cnetctl: two entry points for a fresh Debian/Ubuntu machine (run as root / with sudo).
#   sudo make demo   install everything, apply manifests/quickstart.yaml, show status, run its checks
#   sudo make test   install everything, run the whole test suite (kernel tests in a throw-away netns)

VENV    ?= .venv
PY      := $(VENV)/bin/python
CNETCTL := $(VENV)/bin/cnetctl
MANIFEST ?= manifests/quickstart.yaml
APT_PACKAGES := iproute2 iputils-ping iptables nftables libnftables1 python3-venv util-linux

STAMP   := $(VENV)/.installed

.PHONY: demo test deps venv unit lint clean destroy-demo

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY):
	python3 -m venv $(VENV)

# Re-installs only when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	$(CNETCTL) apply $(MANIFEST)
	$(CNETCTL) status
	@echo
	@echo "Applied. Look around:  sudo $(CNETCTL) exec quickstart web -- ip addr"
	@echo "Verify again:          sudo $(CNETCTL) verify $(MANIFEST)"
	@echo "Remove it:             sudo $(CNETCTL) destroy --name quickstart   (or: sudo make destroy-demo)"

destroy-demo: venv
	$(CNETCTL) destroy $(MANIFEST)

test: deps venv
	$(PY) -m pytest -q

unit: venv
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
