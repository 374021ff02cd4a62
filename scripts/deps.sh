# Sourced by demo.sh and test.sh: installs the Debian packages davit needs, once.
# Idempotent: when every package is already installed it does nothing (and needs no network).
set -euo pipefail

# Build tools (protoc compiles etcd's API for the etcd store), the exec driver's needs, the container driver's
# runtimes and image tools, the guest builder's tools, what the proxy and DNS benchmarks compare against,
# Prometheus (the autoscaler's `prometheus` metrics are tested against a real one) and etcd (the etcd store is
# tested on real clusters).
DAVIT_PACKAGES=(gcc libc6-dev ca-certificates procps iproute2 curl busybox-static protobuf-compiler
  crun runc docker-registry skopeo umoci
  cpio xz-utils e2fsprogs
  haproxy wrk dnsutils
  prometheus etcd-server)
# QEMU comes from bookworm-backports (10.x): its microvm machine boots the test guest fastest, and it has to
# match a backports qemu-utils where one is installed already.
DAVIT_BACKPORTS_PACKAGES=(qemu-system-x86 qemu-system-data qemu-utils)
DAVIT_BACKPORTS_LIST=/etc/apt/sources.list.d/davit-bookworm-backports.list

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

install_packages() {
  local missing backports sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  mapfile -t missing < <(missing_packages "${DAVIT_PACKAGES[@]}")
  mapfile -t backports < <(missing_packages "${DAVIT_BACKPORTS_PACKAGES[@]}")
  # Backports QEMU: only a backports build counts as installed.
  if [ ${#backports[@]} -eq 0 ] && ! dpkg-query -W -f='${Version}' qemu-system-x86 | grep -q bpo; then
    backports=("${DAVIT_BACKPORTS_PACKAGES[@]}")
  fi
  if [ ${#missing[@]} -eq 0 ] && [ ${#backports[@]} -eq 0 ]; then
    return
  fi
  if [ ${#backports[@]} -gt 0 ] && [ ! -f "$DAVIT_BACKPORTS_LIST" ]; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee "$DAVIT_BACKPORTS_LIST" >/dev/null
  fi
  echo "==> installing Debian packages: ${missing[*]} ${backports[*]}"
  $sudo apt-get update
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  if [ ${#backports[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends -t bookworm-backports "${DAVIT_BACKPORTS_PACKAGES[@]}"
  fi
}

require_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo (Rust 1.90 or newer) is needed; install it with rustup (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}

install_packages
require_cargo
