# nvrd developer entry points. Every target installs what it needs (idempotently):
# CI runs on a clean clone and has nothing that was installed by hand.

SHELL := /bin/bash
PY := /usr/bin/python3
VENV := .venv
VBIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ARCH := $(shell dpkg --print-architecture)
DEB := build/deb/nvrd_$(VERSION)_$(ARCH).deb

# Debian packages per purpose. ensure-debs installs only what is missing.
DEBS_DEV := python3-venv python3-dev libsystemd-dev pkg-config gcc curl openssl iproute2
# Recording: ffmpeg records; the GStreamer RTSP server (tools/test-camera, run with
# Debian's python3 for python3-gi) is the test camera of `make run` and the host tier.
# p7zip-full: the host tier opens password-protected exports with 7z, as users do.
DEBS_MEDIA := ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly p7zip-full
# Browser: the host tier plays HLS with hls.js in Debian's Chromium (issue 5: "plays in
# a browser"), driven by playwright-core from npm (tests/browser); nodejs (20, with npm,
# on these machines) runs it.
# Debian's Chromium plays H.264/AAC through MSE; a browser downloaded by a test tool
# would need the network.
DEBS_BROWSER := chromium nodejs
BROWSER_STAMP := tests/browser/node_modules/.package-lock.stamp
# ledmon: the vm tier runs the real ledctl (the indicators' ledctl backend) where no
# enclosure exists. dosfstools: the vm tier formats its USB stick vfat.
DEBS_VM := qemu-system-x86 linux-image-amd64 busybox-static mdadm cryptsetup-bin \
	smartmontools e2fsprogs xfsprogs udev dosfstools ledmon
DEBS_DEB := build-essential debhelper dh-virtualenv dpkg-dev python3-venv python3-dev libsystemd-dev pkg-config gcc
DEBS_APPLIANCE := mmdebstrap qemu-system-x86 linux-image-amd64 e2fsprogs

define ensure-debs
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

.PHONY: help run test unit host vm appliance deb bench deps-dev deps-media deps-browser deps-vm deps-appliance clean

help:
	@echo "make run        development instance: HTTP 127.0.0.1:8080, HTTPS 127.0.0.1:8443, storage ./var,"
	@echo "                recording a local test camera (rtsp://127.0.0.1:8554/test)"
	@echo "make test       all four tiers: unit host vm appliance"
	@echo "make unit|host|vm|appliance   one tier"
	@echo "make deb        build $(DEB)"
	@echo "make bench      benchmarks (print figures, never fail on timing)"

deps-dev: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(call ensure-debs,$(DEBS_DEV))
	[ -x $(VBIN)/python ] || $(PY) -m venv $(VENV)
	$(VBIN)/pip install -q --upgrade pip
	$(VBIN)/pip install -q -e '.[test]'
	touch $@

# Checked every time (dpkg-query only), not only when the venv is made.
deps-media:
	$(call ensure-debs,$(DEBS_MEDIA))

# Debian packages checked every time; npm ci only when package-lock.json changed
# (or node_modules is gone): the stamp lives inside node_modules.
deps-browser: $(BROWSER_STAMP)
	$(call ensure-debs,$(DEBS_BROWSER))
$(BROWSER_STAMP): tests/browser/package-lock.json
	$(call ensure-debs,$(DEBS_BROWSER))
	cd tests/browser && npm ci --no-audit --no-fund
	touch $@

deps-vm: deps-dev
	$(call ensure-debs,$(DEBS_VM))
	[ -x $(VBIN)/vng ] || $(VBIN)/pip install -q virtme-ng

deps-appliance: deps-dev
	$(call ensure-debs,$(DEBS_APPLIANCE))

var/nvrd.toml: etc/nvrd/dev.toml.in
	mkdir -p var
	sed "s|@TOP@|$(CURDIR)|g" $< > $@

run: deps-dev deps-media var/nvrd.toml
	exec $(VBIN)/python tools/dev-run

test: unit host vm appliance

unit: deps-dev
	$(VBIN)/pytest -q tests/unit

host: deps-dev deps-media deps-browser
	$(VBIN)/pytest -q tests/host

vm: deps-vm
	tests/vm/run

deb: $(DEB)
$(DEB): pyproject.toml tools/build-deb $(wildcard $(shell git ls-files --cached --others --exclude-standard nvrd debian systemd etc 2>/dev/null))
	$(call ensure-debs,$(DEBS_DEB))
	tools/build-deb build/deb

appliance: deps-appliance $(DEB)
	NVRD_DEB=$(DEB) $(VBIN)/pytest -q tests/appliance

bench: deps-vm deps-media
	$(VBIN)/python -m bench
	# Storage figures need the real kernel: tests/vm/bench_*.py in a guest of their own.
	NVRD_VM_SCRATCH=build/vm/bench tests/vm/run -o python_files='bench_*.py' -s

clean:
	rm -rf build var .stamps
