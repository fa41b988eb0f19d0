# vmpool: two commands do all the set-up on a fresh Debian machine with Python 3.11.
#   make run    the whole service on http://127.0.0.1:8000 (PORT, VMPOOL_CONFIG_FILE, PROVIDER=vcsim)
#   make test   ruff and mypy, then every test, against real redis-server, slapd and vcsim (make lint: the first two)
#   make bench  the benchmarks (docs/performance.md); make fuzz: long OpenAPI fuzzing;
#   make package: the deployable stage in build/package; make deploy, config-push, infra-deploy,
#   chalice-deploy STAGE=...: docs/deploy.md
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PROVIDER ?= dummy
export DEBIAN_FRONTEND := noninteractive

RUN_APT := redis-server
TEST_APT := redis-server slapd ldap-utils openssl golang-go golang-github-vmware-govmomi-dev bind9 chromium binutils
# Packaging strips the C extensions' debug symbols (infra/slim_zip.py) with binutils' strip.
PACKAGE_APT := binutils
ifeq ($(PROVIDER),vcsim)
RUN_APT += golang-go golang-github-vmware-govmomi-dev
endif

.PHONY: run test lint package deploy config-push infra-deploy chalice-deploy bench fuzz apt-run apt-test apt-package venv vcsim clean

run: apt-run venv $(if $(filter vcsim,$(PROVIDER)),vcsim)
	$(PY) -m local.run --port $(PORT) --provider $(PROVIDER)

test: lint apt-test vcsim
	$(PY) -m pytest -p no:warnings $(PYTEST_ARGS)
	@status=0; PATH="$(CURDIR)/$(VENV)/bin:$$PATH" infra/package.sh prod build/package-prod || status=$$?; \
	if [ $$status = 2 ]; then echo "skipped: packaging the prod stage needs Python 3.12+ (see docs/deploy.md)"; \
	elif [ $$status != 0 ]; then exit $$status; \
	else $(VENV)/bin/cfn-lint build/package-prod/sam.json; fi

# Lint and types first (seconds), so a finding fails `make test` before the slow tests run.
# Settings: pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The deployable stage: build/package/sam.json (merged template) and deployment.zip, offline
# after the first build. STAGE=prod for production; VMPOOL_CONFIG_FILE=my.yaml packages that config.
STAGE ?= dev
package: apt-package venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" infra/package.sh $(STAGE) build/package

# Deploy a stage: make deploy STAGE=prod BUCKET=my-deploy-bucket PARAMS="VpcId=vpc-0abc ..."
# (code and template through S3, a CloudFormation change set; docs/deploy.md)
deploy: apt-package venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHON=$(CURDIR)/$(PY) infra/deploy.sh $(STAGE) $(BUCKET) $(PARAMS)

# Publish the pools without a code deploy: make config-push STAGE=prod CONFIG=my-vmpool.yaml
# (validated as at start-up; running functions use it within a minute)
CONFIG ?= chalicelib/vmpool.yaml
config-push: venv
	$(PY) -m infra.config_push --stage $(STAGE) --file $(CONFIG) $(if $(CONFIG_BUCKET),--bucket $(CONFIG_BUCKET))

# The chalice deploy path: the infrastructure stack once, then `chalice deploy` for code changes.
infra-deploy: venv
	$(PY) -m infra.deploy --stage $(STAGE) --bucket $(BUCKET) --infra-only $(PARAMS)
chalice-deploy: venv
	PYTHON=$(CURDIR)/$(PY) infra/chalice_deploy.sh $(STAGE)

# Benchmarks (not tests): prints a table and writes bench/results.json. BENCH_ARGS=--quick.
bench: apt-test venv vcsim
	$(PY) bench/run.py $(BENCH_ARGS)

# The OpenAPI fuzzing of `make test`, with many more examples and every API version.
fuzz: apt-test venv
	VMPOOL_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),200) VMPOOL_FUZZ_VERSIONS=v3,v2,v1,unversioned \
		$(PY) -m pytest -p no:warnings tests/fuzz

# Installs only the Debian packages that are missing: a no-op (no apt-get at all) once they are there.
apt-run:
	@./tools/apt-ensure.sh $(RUN_APT)
apt-test:
	@./tools/apt-ensure.sh $(TEST_APT)
apt-package:
	@./tools/apt-ensure.sh $(PACKAGE_APT)

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || ./tools/apt-ensure.sh python3-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

vcsim:
	@sh tools/vcsim/build.sh

clean:
	rm -rf $(VENV) .run build tools/vcsim/vcsim .mypy_cache .ruff_cache
