# Shared by scripts/run, scripts/test and scripts/bench: install what is
# missing (Debian 12, as root), mount what the kernel side needs, build once.
# shellcheck shell=bash

# Debian packages longconn builds and tests with.
LONGCONN_PACKAGES=(
  clang-19 libbpf-dev          # eBPF programs: compiler and libbpf headers
  bpftool iproute2             # tests: program/link inspection, ss -tin
  nftables iperf3              # tests and benchmarks: loss injection, load
  time strace                  # benchmarks: peak RSS, refresh wall time; tests: pin's capabilities (strace delays a syscall)
  prometheus-node-exporter     # tests: a real textfile-collector scrape
  prometheus                   # promtool check metrics
  python3 python3-venv         # tests: OTLP/JSON checked with the official schema (PyPI opentelemetry-proto)
  systemd                      # systemd-analyze verify on the units
  podman containerd runc       # tests: workloads named from real container runtimes (issue 17)
  busybox-static containernetworking-plugins  # tests: container rootfs (no image registry), podman's bridge
  dpkg-dev binutils lintian    # scripts/package: dpkg-shlibdeps, strip, the package check
  man-db bash-completion       # package test: `man longconn-reader`, `longconn-reader co<TAB>`
)

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (eBPF load/attach and package installs): sudo $0 $*"
}

install_missing() {
  local missing=()
  for p in "${LONGCONN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
}

mount_kernel_fs() {
  if ! stat -f -c %T /sys/fs/bpf 2>/dev/null | grep -q bpf; then
    mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs at /sys/fs/bpf"
  fi
  if [ -z "$(ls -A /sys/kernel/tracing 2>/dev/null)" ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing || die "cannot mount tracefs at /sys/kernel/tracing"
  fi
  grep -q ' cgroup2 ' /proc/mounts || die "no cgroup v2 filesystem mounted (see /proc/mounts)"
}

build_release() {
  cargo build --release --workspace --locked 2>&1 | grep -v '^\s*Compiling' >&2 || true
  [ -x target/release/longconn-pin ] && [ -x target/release/longconn-reader ] || die "build failed"
}
