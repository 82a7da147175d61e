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

# The review console comes up on loopback beside it (admin.listen, 127.0.0.1:8081); the first run adds an
# account named admin and prints its one-time password.
run: $(STAMP)
	$(VENV)/bin/verdict-node admin ensure admin
	$(VENV)/bin/verdict-node serve --console

# Tests run real servers: sshd (SSH source), PostgreSQL (Lemmy/Mastodon attribution) and Chromium with
# ChromeDriver (the review console). Install what is missing when we run as root; otherwise say what to install.
system-deps:
	@missing=""; \
	command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  else echo "the tests need:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# Fedify (npm) is the independent ActivityPub peer of tests/test_interop_fedify.py; pinned by package-lock.json.
INTEROP_MODULES := tests/interop/node_modules
$(INTEROP_MODULES): tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund
	touch $@

test: $(STAMP) system-deps $(INTEROP_MODULES)
	$(PY) -m pytest $(PYTEST_ARGS)

# Every bench/*.py and every bench package with a __main__.py (bench/network/), with no arguments.
bench: $(STAMP)
	for b in bench/*.py bench/*/__main__.py; do m=$${b%.py}; m=$${m%/__main__}; \
	  $(PY) -m $$(echo $$m | tr / .) || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
