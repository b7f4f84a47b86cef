#!/usr/bin/env bash
# Installs the system packages weft's tests need: a real etcd (etcd-server,
# etcd-client) for the etcd store tests, and iptables/iproute2 for the
# network-fault tests. Idempotent: does nothing when etcd and iptables are
# already on PATH. Needs root (or sudo) and Debian/Ubuntu apt.
set -euo pipefail

need=0
for bin in etcd iptables; do
	if ! command -v "$bin" >/dev/null 2>&1; then
		echo "test-deps: $bin not found on PATH" >&2
		need=1
	fi
done
if [ "$need" -eq 0 ]; then
	echo "test-deps: etcd and iptables already installed"
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "test-deps: must run as root (or have sudo) to install packages" >&2
		exit 1
	fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "test-deps: apt-get not found; install etcd-server, etcd-client, iptables and iproute2 by hand" >&2
	exit 1
fi

if ! $SUDO apt-get update; then
	echo "test-deps: apt-get update failed" >&2
	exit 1
fi
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client iptables iproute2; then
	echo "test-deps: apt-get install failed" >&2
	exit 1
fi

for bin in etcd iptables; do
	if ! command -v "$bin" >/dev/null 2>&1; then
		echo "test-deps: $bin still not on PATH after install (iptables may live in /usr/sbin)" >&2
		exit 1
	fi
done
echo "test-deps: installed; $(etcd --version | head -n1)"
