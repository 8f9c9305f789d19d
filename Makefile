# Cova: the confidential-container guest agent. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
# go.mod names the toolchain (go1.26.10: stdlib fixes govulncheck reports for
# 1.26.8); let the go command fetch it from the module proxy.
export GOTOOLCHAIN := auto
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKG := github.com/cova-project/cova
LDFLAGS := -s -w -X $(PKG)/agent.Version=$(VERSION)
STATIC := CGO_ENABLED=1 $(GO) build -trimpath -tags 'netgo osusergo' -ldflags '$(LDFLAGS) -extldflags -static'
TESTFLAGS ?= -count=1 -timeout 20m
BENCHTIME ?= 20x

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-14s\033[0m %s\n",$$1,$$2}'

build: ## build the static agent and tools into bin/
	@mkdir -p bin
	$(STATIC) -o bin/cova-agent ./cmd/cova-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cova-ctl ./cmd/cova-ctl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cova-rootfs ./cmd/cova-rootfs
	@file bin/cova-agent | grep -q 'statically linked' || { echo "bin/cova-agent is not static"; exit 1; }

test: ## run every test (root tests need root; CI=true makes skips fail)
	$(GO) test $(TESTFLAGS) ./...

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$$($(GO) env GOPATH)/bin/staticcheck ./...
	$(GO) run ./hack/lint ./...

vulncheck: ## govulncheck with a vulndb built from the Go module proxy (vuln.go.dev is unreachable)
	bash hack/vulncheck.sh

faults: ## the fault table: every catalogued fault, its outcome and time (root rows need root)
	set -o pipefail; $(GO) test -count=1 -v -run '^TestFaults$$' ./test/faults/ | sed -n 's/^        //; /^area *| fault/,/^ *$$/p; /^--- FAIL/p; /^FAIL/p; /^ok/p'

protos: ## regenerate the Go code from protocols/**/*.proto
	bash hack/protos.sh

check-protos: ## fail if the generated code is stale
	bash hack/protos.sh --check

SOAK_CYCLES ?= 500
soak: ## create/start/exec/remove cycles through the agent; fds, goroutines, mounts, cgroups, RSS before/after (root)
	set -o pipefail; COVA_SOAK_CYCLES=$(SOAK_CYCLES) $(GO) test -count=1 -v -run '^TestSoakContainerCycles$$' ./agent/ | grep -E 'cycle|soak_test|^--- |^ok|FAIL'

FUZZTIME ?= 10s
fuzz: ## run every fuzz target for FUZZTIME each (seed corpora run in make test anyway)
	@set -e -o pipefail; grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u | while read -r d; do \
	  for f in $$(grep -h '^func Fuzz' $$d/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "== $$d $$f ($(FUZZTIME))"; \
	    out=$$(mktemp); \
	    if ! $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$d 2>&1 | tee $$out; then \
	      if grep -q 'context deadline exceeded' $$out && ! grep -qi 'failing input' $$out; then \
	        echo "== $$f: the fuzz engine timed out stopping a worker (no failing input): once more"; \
	        $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$d || { rm -f $$out; exit 1; }; \
	      else rm -f $$out; exit 1; fi; \
	    fi; rm -f $$out; \
	  done; done

bench: build ## agent benchmarks vs runc (ratios from one run)
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./test/bench/

bench-pull: ## guest pull vs skopeo+umoci, the inflate+sha256 floor, encrypted vs plain (ratios, one run)
	sh imagepull/testdata/deps.sh >/dev/null
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkPull' -benchtime 2x ./imagepull/

size: ## stripped static binary size, and each direct dependency's share
	@$(MAKE) --no-print-directory build >/dev/null
	@ls -l bin/cova-agent | awk '{printf "bin/cova-agent: %.2f MB\n", $$5/1e6}'
	@$(GO) tool nm -size -sort size bin/cova-agent 2>/dev/null | head -0 || true
	@bash hack/size.sh

vm-test: build ## boot the initrd in QEMU (TCG) and run containers in it
	bash test/vm/deps.sh
	$(GO) test -count=1 -v -run . ./test/vm/

bench-boot: build ## QEMU start -> first rpc, agent startup, poweroff (TCG)
	bash test/vm/deps.sh
	$(GO) test -count=1 -run '^$$' -bench Boot -benchtime 5x ./test/vm/

initrd: build ## bin/initrd.img: the agent as /init plus virtio-serial/blk modules
	bash test/vm/deps.sh
	eval "$$(bash test/vm/fetch-kernel.sh)" && bin/cova-rootfs build --agent bin/cova-agent --out bin/initrd.img \
	  --kernel-modules "$$ROOT" --modules virtio_pci,virtio_console,virtio_blk

demo: build ## the confidential pod flow in a QEMU (TCG) guest: initdata, guest pull, policy (root)
	bash test/vm/deps.sh
	sh imagepull/testdata/deps.sh >/dev/null
	set -o pipefail; $(GO) test -count=1 -v -run '^TestDemo$$' ./test/vm/ | sed -n 's/^ *demo_test.go:[0-9]*: //p; /^--- /p; /^FAIL/p'

demo-host: build ## run a busybox container through the agent in host mode (root)
	bash test/demo.sh

clean: ## remove build outputs
	rm -rf bin

.PHONY: vulncheck faults bench-pull soak fuzz help build test lint protos check-protos bench size demo demo-host clean vm-test bench-boot initrd
