#!/usr/bin/env bash
# Pushes the sandbox images built by scripts/build-images.sh (OCI layouts under
# $STACK_TOOLS_DIR/images) to the stack's registry as boxlite/<name>:<tag>. Idempotent: an image
# whose manifest the registry already holds is skipped. Usage: push.sh REGISTRY_HOST:PORT
set -euo pipefail
registry=${1:?usage: push.sh REGISTRY_HOST:PORT}
images="${STACK_TOOLS_DIR:-/opt/stack-tools}/images"

# Exit 78 (EX_CONFIG): retrying cannot help.
command -v skopeo >/dev/null || { echo "skopeo is missing: run scripts/install-deps.sh" >&2; exit 78; }
[ -d "$images" ] || { echo "no images in $images: run scripts/build-images.sh" >&2; exit 78; }
pushed=0
for layout in "$images"/*/; do
  layout=${layout%/}
  name=$(basename "$layout")
  # Not images: a layout being built, and the registry storage built from them.
  case "$name" in *.tmp | registry-seed) continue ;; esac
  # The layout's one tag (umoci names it in index.json).
  tag=$(sed -n 's/.*"org.opencontainers.image.ref.name":"\([^"]*\)".*/\1/p' "$layout/index.json")
  [ -n "$tag" ] || { echo "no tagged image in $layout: run scripts/build-images.sh --force" >&2; exit 78; }
  local_digest=$(skopeo inspect --raw "oci:$layout:$tag" | sha256sum | cut -d' ' -f1)
  remote_digest=$(skopeo inspect --raw --tls-verify=false "docker://$registry/boxlite/$name:$tag" 2>/dev/null | sha256sum | cut -d' ' -f1 || true)
  if [ "$local_digest" = "$remote_digest" ]; then
    echo "boxlite/$name:$tag is in the registry (sha256:$local_digest)"
    continue
  fi
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://$registry/boxlite/$name:$tag"
  echo "pushed boxlite/$name:$tag (sha256:$local_digest)"
  pushed=$((pushed + 1))
done
echo "images: $pushed pushed"
