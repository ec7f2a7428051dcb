#!/usr/bin/env bash
# Installs what `stack` and its default services need on Debian/Ubuntu (run as root, or with sudo
# available). Idempotent: what is already present is skipped. Usage:
#   scripts/install-deps.sh            # servers of the default stack + the service user
#   scripts/install-deps.sh --microvm  # also what the microVM backend needs (docs/microvm.md):
#                                      # protoc to build `--features microvm`, busybox-static for
#                                      # the boot probe, and BoxLite's 0.10.8 runtime
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

MICROVM=0
for arg in "$@"; do
  case "$arg" in
    --microvm) MICROVM=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) printf 'error: unknown option %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root or install sudo"
  SUDO="sudo"
fi
command -v apt-get >/dev/null || die "this script installs Debian packages; install the equivalents of: postgresql-15 redis-server"

# Debian packages of the default stack's servers (and the clients its init steps use); runc
# runs the runners' sandboxes; mmdebstrap, umoci and busybox-static build the sandbox images,
# skopeo pushes them (curl waits for the registry that keeps them, and the tests use it).
PACKAGES=(postgresql-15 postgresql-client-15 redis-server docker-registry caddy python3 ca-certificates
  runc mmdebstrap umoci skopeo busybox-static curl)
# slirp4netns gives the runners' sandboxes outbound network when RUNNER_OUTBOUND=on
# (docs/platform.md, "Outbound network"), without touching the host's network configuration.
PACKAGES+=(slirp4netns)
if [ "$MICROVM" = 1 ]; then
  # protoc builds the boxlite crate; busybox-static (above) fills the boot probe's image.
  PACKAGES+=(protobuf-compiler python3-pip)
fi
# Node.js 20+ runs the OIDC provider; machines that already have it (nodesource) keep theirs.
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Keep the package from creating and starting its own cluster on :5432; stack runs its own.
  $SUDO mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  say "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages already installed"
fi

# PostgreSQL refuses to run as root: when stack runs as root it starts postgres as this user.
if ! id stacksvc >/dev/null 2>&1; then
  say "creating the unprivileged service user stacksvc"
  $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin stacksvc
fi

# slirp4netns run by an unprivileged runner opens /dev/net/tun itself: udev's default rule makes
# it 0666 (safe: making a tap device still needs CAP_NET_ADMIN in its namespace); without udev
# (containers, small VMs) it is root's only. Set now; udev-less hosts need it again after a reboot.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  say "making /dev/net/tun usable by unprivileged runners (mode 0666, as udev does)"
  $SUDO chmod 0666 /dev/net/tun
fi

command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs)"

# Garage serves the S3 role. It is built from crates.io once (about 15 minutes on 2 cores) into
# a cache that later runs reuse, and linked onto PATH.
GARAGE_VERSION=2.5.0
TOOLS=${STACK_TOOLS_DIR:-/opt/stack-tools}
garage_bin="$TOOLS/garage-$GARAGE_VERSION/bin/garage"
if [ ! -x "$garage_bin" ] || ! "$garage_bin" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
  say "building garage $GARAGE_VERSION (once; about 15 minutes)"
  $SUDO mkdir -p "$TOOLS"
  $SUDO env "PATH=$PATH" cargo install garage --version "$GARAGE_VERSION" --locked --quiet --root "$TOOLS/garage-$GARAGE_VERSION"
else
  say "garage $GARAGE_VERSION already built"
fi
$SUDO ln -sf "$garage_bin" /usr/local/bin/garage

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 20 ] || die "the OIDC provider needs Node.js 20 or later (found ${node_major}); Debian 12's nodejs is 18: install Node.js 20+ (e.g. from nodesource) and run this again"

# The OIDC provider's packages, exactly as locked.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$here/services/dex/package-lock.json" ]; then
  if [ ! -d "$here/services/dex/node_modules" ] || [ "$here/services/dex/package-lock.json" -nt "$here/services/dex/node_modules" ]; then
    say "installing the OIDC provider's npm packages"
    (cd "$here/services/dex" && npm ci --no-audit --no-fund --loglevel=error && touch node_modules)
  fi
  sh "$here/services/dex/bundle.sh"
fi
# BoxLite's runtime (shim, guest agent, libkrunfw) for the microvm feature. The crate is built
# without one (stub mode, .cargo/config.toml); the same version ships inside BoxLite's Python
# wheel on PyPI, which unpacks it on first use. We let it, then keep a copy where `stack` looks.
if [ "$MICROVM" = 1 ]; then
  BOXLITE_VERSION=0.10.8
  runtime_dir="$TOOLS/boxlite-$BOXLITE_VERSION/runtime"
  if [ -x "$runtime_dir/boxlite-shim" ] && [ -f "$runtime_dir/libkrunfw.so.5" ]; then
    say "BoxLite $BOXLITE_VERSION runtime already installed"
  else
    say "fetching BoxLite $BOXLITE_VERSION's runtime from its PyPI wheel"
    py=$(command -v python3.11 || command -v python3)
    "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
      || die "BoxLite's $BOXLITE_VERSION wheel is built for CPython 3.11; found $("$py" --version 2>&1)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$py" -m pip download --quiet --no-deps --only-binary=:all: "boxlite==$BOXLITE_VERSION" -d "$work/wheel"
    "$py" -m pip install --quiet --no-deps --target "$work/site" "$work"/wheel/boxlite-*.whl
    # Creating a runtime unpacks the embedded binaries under $HOME/.local/share/boxlite/runtimes.
    HOME="$work/home" PYTHONPATH="$work/site" "$py" -c "
import asyncio, boxlite
async def main():
    boxlite.Boxlite(boxlite.Options(home_dir='$work/boxlite-home'))
asyncio.run(main())
" || true
    unpacked=$(ls -d "$work"/home/.local/share/boxlite/runtimes/v"$BOXLITE_VERSION"-* 2>/dev/null | head -1)
    [ -n "$unpacked" ] && [ -x "$unpacked/boxlite-shim" ] || die "BoxLite's wheel did not unpack its runtime (see docs/microvm.md)"
    $SUDO mkdir -p "$runtime_dir"
    $SUDO cp -a "$unpacked"/. "$runtime_dir"/
    say "BoxLite runtime installed in $runtime_dir"
  fi
fi
# The sandbox images the runners run (the `images` task pushes them to the stack's registry).
"$here/scripts/build-images.sh"
say "dependencies ready"
