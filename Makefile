# vmcred — see README.md. Every target works on a fresh clone; `make test`
# and `make demo` install nothing but Go modules.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOFLAGS_BUILD := -trimpath -ldflags '$(LDFLAGS)'
STATICCHECK_VERSION := v0.8.2
FUZZTIME  ?= 20s

.PHONY: all build build-native build-arm64 test demo lint fmt vet staticcheck nix-parse fuzz vm-setup vm-test clean

all: build

build: build-native build-arm64

# The native (x86_64 here) binaries, then static linux/arm64 ones for aarch64
# guests and hosts (NAME-linux-arm64); `file bin/*` shows both.
build-native:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vmcred-host ./host/cmd/vmcred-host
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vmcred-guest ./guest/cmd/vmcred-guest

build-arm64:
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vmcred-host-linux-arm64 ./host/cmd/vmcred-host
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/vmcred-guest-linux-arm64 ./guest/cmd/vmcred-guest

# Every unit and simulated-VM test. -count=1: results must come from this run.
# testsum prints what go test would, then one line naming the tests that
# skipped and why (a missing tool, by name), then "N passed, N failed".
test:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/testsum ./integration/cmd/testsum
	$(BIN)/testsum $(GO) test -count=1 ./...

demo: build
	./integration/demo.sh

lint: fmt vet staticcheck nix-parse

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(GO) vet -tags vmtest ./integration/vm/

staticcheck:
	@command -v staticcheck >/dev/null 2>&1 || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck -tags vmtest ./...

# Every .nix file must parse (nix-instantiate from Debian's nix-bin).
nix-parse:
	./nixos-modules/check.sh

# Each fuzz target runs for FUZZTIME (go test allows one target per run).
fuzz:
	./integration/fuzz.sh $(FUZZTIME)

# Real QEMU guests under TCG: tier 1 (busybox initramfs, seconds each; x86_64
# and aarch64) and tier 2 (debootstrapped Debian images with systemd 252, 257
# and the newest, cached in integration/.cache). Serial logs of every case
# stay in integration/logs/, the tier-2 boot times in logs/boot-times.md.
vm-setup:
	./integration/vm/setup.sh

vm-test: vm-setup
	$(GO) test -tags vmtest -count=1 -timeout 35m -v ./integration/vm/...

clean:
	rm -rf $(BIN)
