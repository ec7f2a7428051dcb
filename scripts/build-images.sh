#!/usr/bin/env bash
# Builds the sandbox images the default stack's runners run, from Debian's packages, into OCI
# layouts under $STACK_TOOLS_DIR/images (default /opt/stack-tools/images), once: a layout whose
# recipe did not change is kept. The `images` task of the default stack pushes them to the
# stack's registry. Called by scripts/install-deps.sh; run it alone to rebuild:
#   scripts/build-images.sh [--force]
#
#   base     Debian bookworm (minbase) with ca-certificates and busybox (httpd, nc, ...): about
#            15 s and 170 MB the first time (mmdebstrap)
#   busybox  a static busybox and its applets, for tests: under 1 s and 1 MB
#   registry-seed  both, pushed into a registry storage that a fresh registry starts from
set -euo pipefail

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static"

TOOLS=${STACK_TOOLS_DIR:-/opt/stack-tools}
IMAGES="$TOOLS/images"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO mkdir -p "$IMAGES"

# The recipes: a layout is rebuilt when its recipe line changes.
BASE_RECIPE="bookworm minbase ca-certificates,busybox nodocs cmd=/bin/sh"
BUSYBOX_RECIPE="busybox-static $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown) cmd=/bin/sh"

# A layout is current when it exists and was built from this recipe.
current() { [ "$FORCE" = 0 ] && [ -f "$1/recipe" ] && [ "$(cat "$1/recipe")" = "$2" ]; }

# Packs a root filesystem into an OCI layout as one layer, tagged $3, with /bin/sh as its
# command; the layout is written beside its final place and renamed, so an interrupted build
# leaves the old one (or none), never half of one.
pack() {
  local rootfs_tar=$1 layout=$2 tag=$3 recipe=$4
  local tmp="$layout.tmp"
  $SUDO rm -rf "$tmp"
  $SUDO umoci init --layout "$tmp"
  $SUDO umoci new --image "$tmp:$tag"
  $SUDO umoci raw add-layer --image "$tmp:$tag" "$rootfs_tar"
  $SUDO umoci config --image "$tmp:$tag" --config.cmd=/bin/sh \
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir=/ --os=linux --architecture=amd64
  $SUDO umoci gc --layout "$tmp"
  echo "$recipe" | $SUDO tee "$tmp/recipe" >/dev/null
  $SUDO rm -rf "$layout"
  $SUDO mv "$tmp" "$layout"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if current "$IMAGES/base" "$BASE_RECIPE"; then
  say "sandbox image base:bookworm already built"
else
  say "building the sandbox image base:bookworm with mmdebstrap (once; about 15 s)"
  # No manual pages, documentation (but the copyright files) or translations: a sandbox image
  # is pushed on every cold start and unpacked by every runner.
  $SUDO mmdebstrap --quiet --variant=minbase --include=ca-certificates,busybox \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$work/base.tar"
  pack "$work/base.tar" "$IMAGES/base" bookworm "$BASE_RECIPE"
fi

if current "$IMAGES/busybox" "$BUSYBOX_RECIPE"; then
  say "sandbox image busybox:latest already built"
else
  say "building the sandbox image busybox:latest"
  root="$work/busybox"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
  echo "root:x:0:" > "$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/busybox.tar" .
  pack "$work/busybox.tar" "$IMAGES/busybox" latest "$BUSYBOX_RECIPE"
fi
# The registry storage a fresh stack's registry starts from (services/registry/seed-storage.sh):
# both images pushed once, here, into a throwaway registry run by the same docker-registry
# program, so that a cold `stack up` copies 45 MB instead of pushing them through the API (0.8 s
# of CPU between skopeo and the registry, in the cold start's busiest second). The `images`
# task still checks every manifest through the API and pushes whatever is missing.
SEED="$IMAGES/registry-seed"
for tool in docker-registry skopeo curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done
SEED_RECIPE="$(docker-registry --version) $(cat "$IMAGES/base/index.json" "$IMAGES/busybox/index.json" | sha256sum | cut -c1-64)"
if current "$SEED" "$SEED_RECIPE"; then
  say "registry seed already built"
else
  say "pushing the images into a registry seed (once; about 1 s)"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/registry"
  printf 'version: 0.1\nlog: { level: error }\nstorage: { filesystem: { rootdirectory: "%s" } }\nhttp: { addr: "127.0.0.1:%s" }\n' \
    "$work/registry/storage" "$port" > "$work/registry/config.yml"
  docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 200); do
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry/log" >&2; die "docker-registry did not start"; }
    sleep 0.05
  done
  for image in base:bookworm busybox:latest; do
    skopeo copy --quiet --dest-tls-verify=false "oci:$IMAGES/${image%%:*}:${image#*:}" \
      "docker://127.0.0.1:$port/boxlite/$image"
  done
  kill "$registry_pid"
  wait "$registry_pid" 2>/dev/null || true
  $SUDO rm -rf "$SEED.tmp"
  $SUDO mkdir -p "$SEED.tmp"
  $SUDO cp -R "$work/registry/storage/docker" "$SEED.tmp/docker"
  echo "$SEED_RECIPE" | $SUDO tee "$SEED.tmp/recipe" >/dev/null
  $SUDO rm -rf "$SEED"
  $SUDO mv "$SEED.tmp" "$SEED"
fi

# Readable by whoever runs `stack`: the task that pushes them needs no root.
$SUDO chmod -R a+rX "$IMAGES"
