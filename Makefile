# kiln — see README.md. Two set-up commands: `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
export GOFLAGS ?= -mod=mod

# Debian packages the build, the tests and the demo need: the real toolchains,
# the real peers (avrdude, stm32flash, simavr, dfu-util, sshd, qemu) and the
# real validators (fsck.vfat, e2fsck, sfdisk, unsquashfs, minisign, bmaptool).
DEB_PACKAGES := \
	gcc-avr binutils-avr avr-libc arduino-core-avr arduino-builder arduino \
	gcc-arm-none-eabi binutils-arm-none-eabi libnewlib-arm-none-eabi libnewlib-dev \
	avrdude stm32flash dfu-util simavr libsimavr-dev libelf-dev gcc libc6-dev pkg-config \
	libusb-1.0-0-dev openssh-server openssh-client iproute2 util-linux fdisk \
	dosfstools mtools e2fsprogs squashfs-tools genimage bmap-tools minisign xz-utils cpio \
	qemu-system-arm qemu-user-static busybox-static ca-certificates chromium \
	nginx-light awscli rclone curl \
	mmdebstrap arch-test dpkg-dev \
	openocd stlink-tools \
	gtkwave \
	u-boot-tools libubootenv-tool

KILN := bin/kiln
STAMP := .deps-installed

.PHONY: all demo test bench lint deps build clean seaweedfs

all: build

# deps installs what is missing (apt-get update first, as a fresh machine needs).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		SUDO=; [ $$(id -u) -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# kiln-helper-<arch>: the static device-side helper `kiln update` uploads (checked by
# hash) to devices of that architecture; kiln looks for it beside its own binary.
# GOARM=6: 32-bit ARM covers armv6l (Pi Zero, Pi 1) as well as armv7l.
build:
	$(GO) build -trimpath -o $(KILN) ./cmd/kiln
	for arch in amd64 arm64 arm; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=6 $(GO) build -trimpath -ldflags=-s -o bin/kiln-helper-$$arch ./cmd/kiln-helper || exit 1; \
	done

# SeaweedFS's S3 gateway for the binary-cache tests (internal/cache): built once from its
# Go module (about 8 minutes on 2 cores) into $$HOME/.cache/kiln-test, keyed by version.
seaweedfs:
	nice $(GO) run ./internal/cache/cachetest/buildweed

demo: deps build
	@echo "== build recipes/blink-uno"
	$(KILN) build recipes/blink-uno --out out/blink-uno
	@echo "== flash it to the emulated Arduino Uno, then prove it by reading it back"
	$(KILN) flash --board arduino-uno --port emu:arduino-uno out/blink-uno

test: deps build seaweedfs
	$(GO) vet ./...
	$(GO) test -race -timeout 60m -count=1 ./...
	# Count-based fuzz budgets: a duration -fuzztime can fail with a bare "context deadline
	# exceeded" when the deadline races a worker (Go 1.26's fuzz coordinator, golang/go#75804).
	$(GO) test -run '^$$' -fuzz='^FuzzParseHex$$' -fuzztime=100000x ./flash
	$(GO) test -run '^$$' -fuzz='^FuzzParseDfu$$' -fuzztime=100000x ./flash
	$(GO) test -run '^$$' -fuzz='^FuzzParseLayout$$' -fuzztime=100000x ./flash/dfu
	$(GO) test -run '^$$' -fuzz='^FuzzParseConfig$$' -fuzztime=100000x ./flash/dfu
	$(GO) test -run '^$$' -fuzz='^FuzzParse$$' -fuzztime=100000x ./flash/stk500v2
	$(GO) test -run '^$$' -fuzz='^FuzzArReader$$' -fuzztime=100000x ./internal/fetch
	$(GO) test -run '^$$' -fuzz='^FuzzParse$$' -fuzztime=100000x ./recipes
	$(GO) test -run '^$$' -fuzz='^FuzzRewritePins$$' -fuzztime=20000x ./recipes
	$(GO) test -run '^$$' -fuzz='^FuzzDecodeRecord$$' -fuzztime=100000x ./internal/station
	$(GO) test -run '^$$' -fuzz='^FuzzCompareVersions$$' -fuzztime=2000x ./internal/debian
	$(GO) test -run '^$$' -fuzz='^FuzzReleaseDate$$' -fuzztime=20000x ./internal/debian
	$(GO) test -run '^$$' -fuzz='^FuzzParseLock$$' -fuzztime=20000x ./internal/debian
	$(GO) test -run '^$$' -fuzz='^FuzzParseSignature$$' -fuzztime=20000x ./internal/trust
	$(GO) test -run '^$$' -fuzz='^FuzzShowRecord$$' -fuzztime=20000x ./internal/fetch
	$(GO) test -run '^$$' -fuzz='^FuzzReadTable$$' -fuzztime=100000x ./image/disk
	$(GO) test -run '^$$' -fuzz='^FuzzReadFile$$' -fuzztime=20000x ./image/disk
	$(GO) test -run '^$$' -fuzz='^FuzzReadBmap$$' -fuzztime=50000x ./image/disk
	$(GO) test -run '^$$' -fuzz='^FuzzParseMetadata$$' -fuzztime=50000x ./image/disk
	$(GO) test -run '^$$' -fuzz='^FuzzXZReader$$' -fuzztime=10000x ./image
	$(GO) test -run '^$$' -fuzz='^FuzzParseELF$$' -fuzztime=50000x ./flash
	$(GO) test -run '^$$' -fuzz='^FuzzDeltaOutput$$' -fuzztime=20000x ./flash/sshdev
	$(GO) test -run '^$$' -fuzz='^FuzzProbeAnswers$$' -fuzztime=20000x ./flash/swd
	$(GO) test -run '^$$' -fuzz='^FuzzUnpackTar$$' -fuzztime=10000x ./internal/fetch
	$(GO) test -run '^$$' -fuzz='^FuzzExtractTar$$' -fuzztime=10000x ./image/rootfs
	$(GO) test -run '^$$' -fuzz='^FuzzDecodeEnv$$' -fuzztime=10000x ./image/uboot
	$(GO) test -run '^$$' -fuzz='^FuzzVerify$$' -fuzztime=10000x ./internal/auditlog
	$(GO) test -run '^$$' -fuzz='^FuzzBootloaderAnswers$$' -fuzztime=5000x ./flash/avr109
	$(GO) test -run '^$$' -fuzz='^FuzzOpenRecord$$' -fuzztime=20000x ./internal/cache
	$(GO) test -run '^$$' -fuzz='^FuzzUnpack$$' -fuzztime=20000x ./internal/cache
	$(GO) test -run '^$$' -fuzz='^FuzzParse$$' -fuzztime=20000x ./firmware/arduino/libindex
	$(GO) test -run '^$$' -fuzz='^FuzzParseProps$$' -fuzztime=20000x ./firmware/arduino
	$(GO) test -run '^$$' -fuzz='^FuzzSplitCommand$$' -fuzztime=20000x ./firmware/arduino
	$(GO) test -run '^$$' -fuzz='^FuzzLoadLibrary$$' -fuzztime=5000x ./firmware/arduino
	@echo "make test: all packages passed"

bench: deps build seaweedfs
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt:" $$fmt; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.7.0 ./...

clean:
	rm -rf bin out
