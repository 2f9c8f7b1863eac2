# cnetctl: two entry points for a fresh Debian/Ubuntu machine (run as root / with sudo).
#   sudo make demo   install the runtime, apply manifests/quickstart.yaml (with its checks), show status
#   sudo make test   install the runtime and the test tools, run the whole test suite (kernel tests in a
#                    throw-away netns)
#   sudo make bench  cnetctl against a shell script of `ip` commands and the `ip -batch` floor (bench/README.md)

VENV    ?= .venv
PY      := $(VENV)/bin/python
CNETCTL := $(VENV)/bin/cnetctl
MANIFEST ?= manifests/quickstart.yaml
APT_PACKAGES := iproute2 iputils-ping iptables nftables libnftables1 python3-venv util-linux
# Only for `make test` (tests/kernel/test_ansible.py): ansible-playbook, and an sshd that the test
# starts itself inside simulated machines. The distribution's own sshd service must never run.
TEST_APT_PACKAGES := openssh-server ansible-core graphviz ruby vagrant python3-jsonschema

# Two stamps: the demo needs the runtime only; `make test` adds the test extras
# (pytest, hypothesis, ruff, mypy) on top of the same venv.
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP    := $(VENV)/.installed-test
BENCH_STAMP   := $(VENV)/.installed-bench

.PHONY: demo test deps test-deps venv test-venv unit lint clean destroy-demo bench bench-venv bench-compare

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Installing openssh-server would start (and, under systemd, enable) the system's sshd. When
# this target is what installs it: policy-rc.d (exit 101) forbids starting any service during
# the install, and /etc/ssh/sshd_not_to_be_run, which Debian's init script and ssh.service
# both honour, keeps it from ever starting later. No recommends: ansible-core's pulls in the
# whole `ansible` collections package.
test-deps: deps
	@missing=""; for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  case " $$missing " in *" openssh-server "*) mkdir -p /etc/ssh && touch /etc/ssh/sshd_not_to_be_run;; esac; \
	  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; fi; \
	  rc=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	          $$missing >/dev/null; } || rc=$$?; \
	  if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	  exit $$rc; \
	fi

$(PY):
	python3 -m venv $(VENV)

# Each re-installs only when the project's dependencies change.
$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e .
	touch $(RUNTIME_STAMP)

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

$(BENCH_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

venv: $(RUNTIME_STAMP)

test-venv: $(TEST_STAMP)

bench-venv: $(BENCH_STAMP)

# The way to remove the demo is printed whatever happens, also when apply or one
# of the checks fails (make still exits non-zero then).
demo: deps venv
	@rc=0; $(CNETCTL) apply $(MANIFEST) || rc=$$?; \
	if [ $$rc -le 1 ]; then $(CNETCTL) status || true; fi; \
	echo; \
	if [ $$rc -eq 0 ]; then \
	  echo "Applied, all checks passed. Look around:  sudo $(CNETCTL) exec quickstart web -- ip addr"; \
	  echo "Verify again:          sudo $(CNETCTL) verify $(MANIFEST)"; \
	else \
	  echo "cnetctl apply failed (exit $$rc: 1 = a check failed, 2 = invalid input or a conflict," \
	       "3 = a kernel operation failed and was rolled back, 4 = not root)."; \
	fi; \
	echo "Remove it:             sudo $(CNETCTL) destroy $(MANIFEST)   (or: sudo make destroy-demo)"; \
	exit $$rc

destroy-demo: venv
	$(CNETCTL) destroy $(MANIFEST)

# Kernel tests run in parallel workers, each in a throw-away world of its own
# (tests/conftest.py starts every pytest-xdist worker through tests/world.sh).
TEST_JOBS ?= 3

test: test-deps test-venv
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist worksteal

unit: test-venv
	$(PY) -m pytest -q tests/unit

# One run, one throw-away world: every shape at every size, the table printed as it goes and
# the results kept as JSON under bench/results/ (BENCH_OUT=... to name the file).
# Compare two runs: make bench-compare A=bench/results/before.json B=bench/results/after.json
BENCH_SHAPES ?= bridge k8s nat
BENCH_SIZES  ?= 10 50 250 1000
BENCH_OUT    ?= bench/results/$(shell date +%Y%m%d-%H%M%S).json

bench: deps bench-venv
	$(PY) bench/bench.py --shape $(BENCH_SHAPES) --sizes $(BENCH_SIZES) --out $(BENCH_OUT)

bench-compare:
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make bench-compare A=before.json B=after.json"; exit 2; }
	python3 bench/bench.py --compare $(A) $(B)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
