# vstor: two commands for a fresh Debian machine, as root.
#   make demo   sets up what is missing, runs the end-to-end demo on a local pool
#   make test   sets up what is missing, runs every test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The RADOS tests' interpreter: Debian's python3-rados is built for /usr/bin/python3, so this
# venv is made from it with the system site packages (make venv-rados; make test-rados).
VENV_RADOS := .venv-rados
APT_PACKAGES := fuse3 libfuse3-3 e2fsprogs util-linux fio mt-st tar genisoimage iproute2 nbdkit libnbd-bin python3-libnbd qemu-utils python3-venv sqlite3 \
	groff-base man-db systemd chromium openssl
# The command each package must provide, to tell whether it is installed.
# groff and man render the man pages in the tests; systemd-analyze verifies vstor@.service;
# chromium renders the dashboard in its test.
APT_PROBES := fusermount3 mkfs.ext4 losetup fio mt tar genisoimage ip nbdkit nbdfuse nbdsh qemu-img groff man systemd-analyze chromium sqlite3 openssl
# Ceph for pools on RADOS and its one-node test cluster (tests/cephlab.py), installed by make
# test-rados only, without recommends (they pull in far more than the daemons and the client
# library); python3-rados is probed by its module file, libsqlite3-mod-ceph (Ceph's SQLite VFS:
# the backup catalog of a RADOS pool) by its library.
RADOS_PACKAGES := ceph-mon ceph-mgr ceph-osd ceph-common python3-rados libsqlite3-mod-ceph
RADOS_PROBES := ceph-mon ceph-mgr ceph-osd ceph ceph-authtool
# make bench's real applications (tools/bench_stall.py, tools/bench_pgbench.py).
BENCH_PACKAGES := stress-ng postgresql
BENCH_PROBES := stress-ng pgbench

.PHONY: drill setup system-deps system-deps-rados system-deps-bench venv venv-rados man demo test test-fast test-rados soak bench bench-tools lint clean \
	coverage-replication

setup: system-deps venv man

system-deps:
	@missing=0; for c in $(APT_PROBES); do command -v $$c >/dev/null || missing=1; done; \
	test -e /usr/lib/x86_64-linux-gnu/libfuse3.so.3 -o -e /usr/lib/aarch64-linux-gnu/libfuse3.so.3 || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "setup: installing system packages: $(APT_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@modprobe fuse 2>/dev/null || true; modprobe loop 2>/dev/null || true

system-deps-rados:
	@missing=0; for c in $(RADOS_PROBES); do command -v $$c >/dev/null || missing=1; done; \
	ls /usr/lib/python3/dist-packages/rados.cpython-*.so >/dev/null 2>&1 || missing=1; \
	ls /usr/lib/*/libcephsqlite.so >/dev/null 2>&1 || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "setup: installing system packages: $(RADOS_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(RADOS_PACKAGES) >/dev/null; \
	fi

system-deps-bench:
	@missing=0; for c in $(BENCH_PROBES); do command -v $$c >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "setup: installing system packages: $(BENCH_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $(BENCH_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

$(VENV_RADOS)/.installed: pyproject.toml
	@test -x $(VENV_RADOS)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(VENV_RADOS)
	$(VENV_RADOS)/bin/python -m pip install -q -e '.[test]'
	@$(VENV_RADOS)/bin/python -c 'import rados' || { echo "python3-rados is missing: make system-deps-rados"; exit 1; }
	@touch $@

venv-rados: system-deps-rados $(VENV_RADOS)/.installed

# Man pages from the parser (tools/make_manpages.py): build/man/vstor.1 and vstor-COMMAND.1.
man: venv
	@$(PY) -m tools.make_manpages build/man

demo: setup
	$(PY) -m tools.demo

# mypy runs beside pytest (it needs a core for ~30 s cold; the suite mostly waits on I/O).
test: setup
	$(VENV)/bin/ruff check vstor tools tests vm
	@$(VENV)/bin/mypy > .mypy.out 2>&1 & mypy=$$!; \
	$(PY) -m pytest -q -m "not soak and not rados" tests; rc=$$?; \
	wait $$mypy; mrc=$$?; cat .mypy.out; rm -f .mypy.out; \
	if [ $$mrc != 0 ]; then echo "mypy found type errors (above)"; fi; \
	exit $$(( rc || mrc ))

test-fast: setup
	$(PY) -m pytest -q -m "not soak and not root" tests

# The RADOS tests: one throwaway Ceph cluster (memstore, 127.0.0.1; vm/ceph.py) for the session,
# then the backend contract, the [rados] variants of the suites and the RADOS tests against it.
# A run of its own (.venv-rados's interpreter); CI (.ci/run) runs it after make test.
test-rados: setup venv-rados
	$(VENV_RADOS)/bin/python -m pytest -q -m "rados and not soak" tests

# Coverage of vstor/replication by the tests that need no root (issue 26: at least 80%).
coverage-replication: setup
	$(PY) -m coverage run --source=vstor/replication -m pytest -q -m "not root and not soak" \
	  tests/test_replication_inproc.py tests/test_replication_logic.py tests/test_listener_limits.py tests/test_pki.py
	$(PY) -m coverage report --fail-under=80

soak: setup
	VSTOR_CRASH_ITERATIONS=200 $(PY) -m pytest -q -m soak tests

bench: setup system-deps-bench venv-rados
	$(PY) -m tools.steady_memory $(MAKE) --no-print-directory bench-tools

# The tools of make bench, without its hold on the VM's free page reporting (tools/steady_memory.py).
bench-tools:
	$(PY) -m tools.bench_fio --all --rounds 3 --runtime 15 --read-repeats 1
	$(PY) -m tools.bench_fio --phase aged --size 1G --targets passthrough,vstor --rounds 3 --runtime 15 --read-repeats 1
	$(PY) -m tools.bench_aged_store --size-mib 512
	$(PY) -m tools.bench_fio --phase mixed --size 1G --targets passthrough,vstor
	$(PY) -m tools.bench_pgbench
	$(PY) -m tools.bench_commit
	$(PY) -m tools.bench_stall
	$(PY) -m tools.bench_read_pipeline
	$(PY) -m tools.bench_small_write
	$(PY) -m tools.bench_segment_gc
	$(PY) -m tools.bench_memory --fill-gib 4
	$(PY) -m tools.bench_tuning
	$(PY) -m tools.bench_replay
	$(PY) -m tools.bench_snapshots
	$(PY) -m tools.bench_replication
	$(PY) -m tools.bench_nbd --rounds 3 --runtime 10
	$(PY) -m tools.bench_pair_pinned --rounds 3
	$(PY) -m tools.bench_tape --size 4G
	$(PY) -m tools.bench_backup --size 4G
	$(PY) -m tools.bench_clients --files 100000 --size 4G
	$(VENV_RADOS)/bin/python -m tools.bench_rados

drill: setup
	$(PY) tools/dr-drill
	$(PY) tools/dr-drill --no-groups

lint: venv
	$(VENV)/bin/ruff check vstor tools tests vm

clean:
	rm -rf $(VENV) $(VENV_RADOS) build *.egg-info .pytest_cache .ruff_cache
