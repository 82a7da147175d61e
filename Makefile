# Two commands on a fresh machine: `make run` and `make test` (README, Quick start).
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: run test system-deps bench clean

# The install is redone only when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.13.0 torchvision==0.28.0 -e '.[test,pdq]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/verdict-node serve

# The SSH source tests run a real sshd on loopback; install it when it is missing and we may.
system-deps:
	@if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server) >/dev/null; \
	  else echo "openssh-server is needed for the SSH tests: sudo apt-get install openssh-server"; exit 1; fi; \
	fi

# Fedify (npm) is the independent ActivityPub peer of tests/test_interop_fedify.py; pinned by package-lock.json.
INTEROP_MODULES := tests/interop/node_modules
$(INTEROP_MODULES): tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund
	touch $@

test: $(STAMP) system-deps $(INTEROP_MODULES)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
