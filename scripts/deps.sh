# Sourced by demo.sh and test.sh: installs the Debian packages davit needs, once.
# Idempotent: when every package is already installed it does nothing (and needs no network).
set -euo pipefail

DAVIT_PACKAGES=(gcc libc6-dev ca-certificates procps iproute2 curl busybox-static)

install_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing Debian packages: ${missing[*]}"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
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

install_packages "${DAVIT_PACKAGES[@]}"
require_cargo
