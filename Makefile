# The two commands of the README:
#   make demo   — local issuer + echo upstream + gateway, prints curl commands
#   make test   — the whole test suite (installs what it needs on Debian first)
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CARGO ?= cargo

.PHONY: demo test deps authz lint bench bench-ratelimit bench-instructions check-config fuzz

# Debian packages the build and the tests need: cmake (pingora's libz-ng-sys), redis-server
# (shared rate-limit tests), promtool from `prometheus` (metrics and alert-rule checks),
# python3 and nodejs (real upstream stacks that decode requests differently: tests/attacks.rs),
# chromium (the admin console, rendered in a real headless browser: tests/console.rs),
# npm (the real authorization server of the token tests: node oidc-provider, tests/authz).
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: deps
	$(CARGO) run --locked -- demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The authorization server of tests/introspection.rs at its pinned version (the tests also
# run this on first use when node_modules is missing).
authz: deps
	cd tests/authz && npm ci --no-audit --no-fund --loglevel=error

test: deps authz lint
	$(CARGO) run --locked -q -- check --config config/gateway.toml
	$(CARGO) run --locked -q -- test --config config/gateway.toml config/gateway.tests.toml
	$(CARGO) test --locked

check-config:
	$(CARGO) run --locked -q -- check --config config/gateway.toml

# Benchmarks print figures; they are not part of `make test`.
bench-ratelimit: deps
	$(CARGO) bench --locked --bench ratelimit

bench: deps
	$(CARGO) bench --locked --bench gateway
	$(CARGO) bench --locked --bench instructions

# Instructions per request under callgrind, beside a bare pingora proxy (no req/s noise).
# The benches install what they run (nginx, wrk, Traefik, Caddy, valgrind) at the versions
# pinned in benches/gateway/install.rs.
bench-instructions: deps
	$(CARGO) bench --locked --bench instructions

# Fuzz the parsers an attacker feeds (tests/fuzz, README "Fuzzing"); not part of `make test`.
# Stable toolchain: cargo-fuzz without a sanitizer, debug assertions on. FUZZ_SECS per target
# (6 targets: ~5 min with the default; the first build compiles every dependency with
# coverage instrumentation: 10-40 min on 2 cores, then seconds). New inputs go to
# tests/fuzz/target/corpus (ignored); the seed corpus tests/fuzz/corpus is only read. A
# finding stops the run and is saved in tests/fuzz/artifacts/<target>/.
FUZZ_SECS ?= 45
FUZZ_TARGETS ?= bearer jws path client_id xff config
FUZZ_DIR := $(CURDIR)/tests/fuzz
FUZZ_FLAGS := --fuzz-dir $(FUZZ_DIR) --sanitizer none --debug-assertions
fuzz: deps
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	$(CARGO) fuzz build $(FUZZ_FLAGS)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_DIR)/target/corpus/$$t; \
		dict=""; [ -f $(FUZZ_DIR)/$$t.dict ] && dict="-dict=$(FUZZ_DIR)/$$t.dict"; \
		echo "== fuzz $$t ($(FUZZ_SECS) s)"; \
		$(CARGO) fuzz run $(FUZZ_FLAGS) $$t $(FUZZ_DIR)/target/corpus/$$t $(FUZZ_DIR)/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 $$dict \
			> $(FUZZ_DIR)/target/$$t.log 2>&1; rc=$$?; \
		grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|Done )" $(FUZZ_DIR)/target/$$t.log; \
		if [ $$rc -ne 0 ]; then \
			grep -E -A8 "panicked at|^==[0-9]+== ERROR" $(FUZZ_DIR)/target/$$t.log | head -30; \
			echo "fuzz $$t: FINDING (exit $$rc), see $(FUZZ_DIR)/target/$$t.log and tests/fuzz/artifacts/$$t/"; exit 1; \
		fi; \
	done
