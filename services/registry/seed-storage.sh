#!/bin/sh
# Gives a fresh registry the storage scripts/build-images.sh pushed the sandbox images into, so a
# cold `stack up` copies 45 MB instead of pushing them through the API. Copied, never linked:
# the copy belongs to the stack's user and goes away with its data. Nothing to do (exit 0) when
# there is no seed or it was written by another docker-registry: the `images` task then pushes.
#   seed-storage.sh STORAGE_DIR
set -eu
storage=$1
seed="${STACK_TOOLS_DIR:-/opt/stack-tools}/images/registry-seed"
[ -d "$seed/docker" ] && [ -f "$seed/recipe" ] || exit 0
[ ! -e "$storage/docker" ] || exit 0
case "$(cat "$seed/recipe")" in
  "$(docker-registry --version) "*) ;;
  *) exit 0 ;;
esac
# Into a scratch dir renamed into place when complete: an interrupted copy leaves no half store.
rm -rf "$storage/docker.partial"
mkdir -p "$storage"
cp -R --reflink=auto "$seed/docker" "$storage/docker.partial"
mv "$storage/docker.partial" "$storage/docker"
