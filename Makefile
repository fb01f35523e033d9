# fmnist-faust: the interface everybody relies on. `make demo` and `make test` are the two
# commands; everything they need is installed and started by these targets.
.PHONY: install lock docs services services-stop model test test-container demo demo-pubsub bench bench-smoke soak clean

PY := .venv/bin/python

install:
	tools/install.sh

# Regenerate requirements.lock and requirements-dev.lock after changing setup.cfg.
lock:
	tools/lock.sh

services:
	tools/services.sh start

services-stop:
	tools/services.sh stop

model: install
	.venv/bin/fmnist-train

test: install
	tools/run-tests.sh $(PYTEST_ARGS)

# The Docker image built (on a debootstrapped Debian base) and run with podman against real
# Kafka and the Pub/Sub emulator: tests/test_container.py. Installs podman if missing.
test-container: install
	tools/container.sh test $(PYTEST_ARGS)

# The docs site (mkdocs.yml, docs/) into .run/site, after regenerating its configuration table.
docs: install
	.venv/bin/python tools/config_table.py
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

# No `model` prerequisite: without a verified model the demo streams with a quick one while
# fmnist-train trains the default in the background, then promotes it live.
demo: install
	tools/demo.sh kafka

demo-pubsub: install model
	tools/demo.sh pubsub

bench: install model
	tools/bench.sh

bench-smoke: install
	tools/bench.sh --smoke

# Long run of the worker and the bridge: bench/results/soak.{json,md,png}.
soak: install model
	tools/soak.sh

clean: services-stop
	rm -rf .run .cache .venv models bench/results/*.tmp
