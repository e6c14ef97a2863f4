# halfclose — every target sets itself up on a fresh machine (npm packages, Debian packages).
# make demo   the main job: rebuild the half-close leak and compare proxies
# make test   every test (unit on loopback, then network-namespace tests as root)

SHELL := /bin/bash
NPM_STAMP := node_modules/.installed

.PHONY: setup system deps build lint test test-unit test-netns demo bench clean

setup: system deps

system:
	@bash scripts/setup-system.sh

deps: $(NPM_STAMP)

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

build: deps
	npx tsc -p tsconfig.json

lint: deps
	npx tsc -p tsconfig.json --noEmit

test: setup build
	bash scripts/test.sh

test-unit: deps build
	bash scripts/test.sh unit

test-netns: setup build
	bash scripts/test.sh netns

demo: setup build
	bash scripts/demo.sh

bench: setup build
	node dist/bench/run.js

clean:
	rm -rf dist
