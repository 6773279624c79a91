# The two commands of the README:
#   make demo   — local issuer + echo upstream + gateway, prints curl commands
#   make test   — the whole test suite (installs what it needs on Debian first)
SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CARGO ?= cargo

.PHONY: demo test deps lint bench bench-ratelimit bench-instructions check-config

# Debian packages the build and the tests need: cmake (pingora's libz-ng-sys), redis-server
# (shared rate-limit tests), promtool from `prometheus` (metrics and alert-rule checks),
# python3 and nodejs (real upstream stacks that decode requests differently: tests/attacks.rs).
deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
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

test: deps lint
	$(CARGO) run --locked -q -- check --config config/gateway.toml
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
bench-instructions: deps
	command -v valgrind >/dev/null 2>&1 || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind
	$(CARGO) bench --locked --bench instructions
