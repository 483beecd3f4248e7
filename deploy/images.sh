#!/usr/bin/env bash
# Build the FedShare compose images locally, with no container registry:
#
#   deploy/images.sh build     # build what is missing or stale, reuse the rest; prints timings
#   deploy/images.sh status    # each image: current / stale / missing (exit 1 unless all current)
#   deploy/images.sh env       # compose variables that select the local images (also written to
#                              # $IMAGES_DIR/images.env: docker compose --env-file ... up --no-build)
#
# Images (tag = the Flower version pinned in requirements.lock):
#   fedshare-local/debian:bookworm          Debian bookworm minbase + Python 3.11 (debootstrap from
#                                           the machine's apt mirror, then `docker import`)
#   fedshare-local/superlink|supernode|superexec
#                                           stand-ins for the official flwr/* images: same
#                                           entrypoints, user (app, uid 49999), /app, /python/venv
#                                           (deploy/images/Dockerfile)
#   fedshare-local/fedshare-superexec       deploy/Dockerfile (the compose SuperExec image) on the
#                                           local superexec, with every dependency of the lock
# Python packages come from a wheelhouse built on the host from requirements.lock (`pip wheel`,
# so torch is the CPU wheel the host resolves), served to `docker build` on 127.0.0.1 only for
# the build: images never reach a package index.
#
# Reuse: every image carries the label org.fedshare.inputs = sha256 of its inputs (the lock file,
# its Dockerfile, the ID of the image it is built on, the Flower version; for the base, its
# debootstrap recipe). An image whose label matches is reused as is.
#
# Environment: IMAGES_DIR (work folder, default .docker-build/), LOCK_FILE (requirements.lock),
# DEBIAN_MIRROR (default: the machine's apt source for bookworm), IMAGE_REPO (fedshare-local).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${IMAGES_DIR:-$ROOT/.docker-build}
LOCK=${LOCK_FILE:-$ROOT/requirements.lock}
REPO=${IMAGE_REPO:-fedshare-local}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
LABEL=org.fedshare.inputs
FLOWER_DOCKERFILE=$ROOT/deploy/images/Dockerfile
APP_DOCKERFILE=$ROOT/deploy/Dockerfile
COMPONENTS=(superlink supernode superexec)
# The legacy builder: Debian's docker.io has no buildx plugin, which BuildKit needs.
export DOCKER_BUILDKIT=0

say() { echo "images.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ -s "$LOCK" ] || die "no lock file at $LOCK"
FLWR_VERSION=$(sed -n 's/^flwr==//p' "$LOCK")
[ -n "$FLWR_VERSION" ] || die "$LOCK pins no flwr==<version>"
BASE_IMAGE=$REPO/debian:$SUITE
APP_IMAGE=$REPO/fedshare-superexec:$FLWR_VERSION

image_of() { echo "$REPO/$1:$FLWR_VERSION"; }

sha() { sha256sum | cut -c1-64; }

# The image requirements: the lock without ray (only Flower's simulation runtime uses it).
requirements() { sed '/^ray==/d' "$LOCK"; }

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

image_label() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

# ---- input hashes ----------------------------------------------------------------------------

make_rootfs() {
  # debootstrap's minimal variant + Python; apt caches dropped (the images never run apt).
  local dir=$1 mirror=$2
  rm -rf "$dir"
  nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$dir" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

base_inputs() { { echo "$SUITE $BASE_PACKAGES"; declare -f make_rootfs; } | sha; }

flower_inputs() {   # $1: component
  { echo "$1 $FLWR_VERSION $(image_id "$BASE_IMAGE")"; cat "$FLOWER_DOCKERFILE"; requirements; } | sha
}

app_inputs() {
  { echo "$FLWR_VERSION $(image_id "$(image_of superexec)")"; cat "$APP_DOCKERFILE"; requirements; } | sha
}

# ---- base ------------------------------------------------------------------------------------

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # the machine's own apt source for the suite: deb822 .sources first, then sources.list lines
  local uri
  uri=$(awk -v suite="$SUITE" '
      /^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == suite) found=u}
      /^$/ {u=""} END {print found}' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite {print $2; exit}' \
                           /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
  [ -n "$uri" ] || die "no apt source for $SUITE found; set DEBIAN_MIRROR"
  echo "$uri"
}

build_base() {
  local inputs; inputs=$(base_inputs)
  if [ "$(image_label "$BASE_IMAGE")" = "$inputs" ]; then echo reused; return; fi
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || die "debootstrap is not installed (apt-get install debootstrap)"
    apt-cache show debootstrap >/dev/null 2>&1 || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
      || die "apt-get install debootstrap failed"; }
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  local rootfs=$WORK/rootfs mirror; mirror=$(debian_mirror)
  say "debootstrap $SUITE (minbase + $BASE_PACKAGES) from the apt mirror"
  make_rootfs "$rootfs" "$mirror"
  local old; old=$(image_id "$BASE_IMAGE")
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change "LABEL $LABEL=$inputs" --message "debootstrap $SUITE" - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  drop_replaced "$old" "$BASE_IMAGE"
  echo built
}

# ---- wheelhouse ------------------------------------------------------------------------------

build_wheelhouse() {
  local dir=$WORK/wheelhouse stamp inputs; inputs=$(requirements | sha); stamp=$dir/.inputs
  if [ -s "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then echo reused; return; fi
  rm -rf "$dir"; mkdir -p "$dir"
  requirements >"$WORK/image-requirements.txt"
  # --no-deps: the lock is complete; the host's pip picks the wheels (torch: its CPU wheel)
  nice -n 10 "$ROOT/.venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    -r "$WORK/image-requirements.txt" -w "$dir" >"$WORK/wheelhouse.log" 2>&1 \
    || { tail -20 "$WORK/wheelhouse.log" >&2; die "pip wheel failed (log: $WORK/wheelhouse.log)"; }
  echo "$inputs" >"$stamp"
  echo built
}

SERVER_PID=
serve_wheelhouse() {
  # a static file server on 127.0.0.1 (free port) for pip's --find-links during `docker build`
  local portfile=$WORK/wheelhouse.port; rm -f "$portfile"
  python3 -c '
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *args: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2] + ".tmp", "w").write(str(server.server_port))
__import__("os").rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()' "$WORK/wheelhouse" "$portfile" &
  SERVER_PID=$!
  for _ in $(seq 100); do [ -s "$portfile" ] && break; sleep 0.1; done
  [ -s "$portfile" ] || die "the wheelhouse server did not start"
  WHEELHOUSE_URL="http://127.0.0.1:$(cat "$portfile")/"
}

stop_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi; }
trap stop_server EXIT

# ---- images ----------------------------------------------------------------------------------

context() {
  # a small build context: the Dockerfiles only COPY the lock file
  local dir=$WORK/context; rm -rf "$dir"; mkdir -p "$dir"; cp "$LOCK" "$dir/requirements.lock"; echo "$dir"
}

drop_replaced() {   # remove the image a rebuild replaced, unless something still uses it
  local old=$1 image=$2
  if [ -n "$old" ] && [ "$old" != "$(image_id "$image")" ]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
}

docker_build() {   # $1 image, $2 inputs hash, rest: docker build arguments
  local image=$1 inputs=$2 old log=$WORK/build-${1//[\/:]/_}.log; shift 2
  old=$(image_id "$image")
  nice -n 10 docker build --force-rm --network host --label "$LABEL=$inputs" -t "$image" "$@" >"$log" 2>&1 \
    || { tail -30 "$log" >&2; die "docker build of $image failed (log: $log)"; }
  drop_replaced "$old" "$image"
}

build_flower_images() {
  local ctx component image inputs built=0; ctx=$(context)
  for component in "${COMPONENTS[@]}"; do
    image=$(image_of "$component"); inputs=$(flower_inputs "$component")
    [ "$(image_label "$image")" = "$inputs" ] && continue
    say "building $image"
    docker_build "$image" "$inputs" -f "$FLOWER_DOCKERFILE" --target "$component" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg FLWR_VERSION="$FLWR_VERSION" \
      --build-arg WHEELHOUSE_URL="$WHEELHOUSE_URL" "$ctx"
    built=$((built + 1))
  done
  [ $built -gt 0 ] && echo built || echo reused
}

build_app_image() {
  local inputs; inputs=$(app_inputs)
  if [ "$(image_label "$APP_IMAGE")" = "$inputs" ]; then echo reused; return; fi
  say "building $APP_IMAGE"
  docker_build "$APP_IMAGE" "$inputs" -f "$APP_DOCKERFILE" \
    --build-arg SUPEREXEC_BASE="$(image_of superexec)" --build-arg FLWR_VERSION="$FLWR_VERSION" \
    --build-arg PIP_SOURCE="--no-index --find-links $WHEELHOUSE_URL" "$(context)"
  echo built
}

# ---- commands --------------------------------------------------------------------------------

all_current() {
  [ "$(image_label "$BASE_IMAGE")" = "$(base_inputs)" ] || return 1
  local c; for c in "${COMPONENTS[@]}"; do
    [ "$(image_label "$(image_of "$c")")" = "$(flower_inputs "$c")" ] || return 1
  done
  [ "$(image_label "$APP_IMAGE")" = "$(app_inputs)" ]
}

write_env() {
  {
    echo "FEDSHARE_SUPERLINK_IMAGE=$(image_of superlink)"
    echo "FEDSHARE_SUPERNODE_IMAGE=$(image_of supernode)"
    echo "FEDSHARE_SUPEREXEC_IMAGE=$APP_IMAGE"
  } >"$WORK/images.env"
}

since() { awk -v now="$EPOCHREALTIME" -v start="$1" 'BEGIN {printf "%.1f", now - start}'; }

timed() {   # timed NAME FUNCTION: run it, print "NAME  built|reused  <seconds>"
  local start=$EPOCHREALTIME result
  result=$("$2")
  printf 'images.sh: %-10s %-6s %6s s\n' "$1" "$result" "$(since "$start")"
}

cmd_build() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 \
    || die "the Docker engine is not reachable (deploy/docker.sh ensure starts one)"
  mkdir -p "$WORK"
  local start=$EPOCHREALTIME
  timed base build_base
  if all_current; then
    echo "images.sh: images     reused"
  else
    timed wheelhouse build_wheelhouse
    serve_wheelhouse
    timed flower build_flower_images
    timed app build_app_image
    stop_server
  fi
  all_current || die "images are still not current after the build"
  write_env
  printf 'images.sh: %-17s %6s s\n' total "$(since "$start")"
  cmd_status
}

cmd_status() {
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (deploy/docker.sh ensure starts one)"
  local ok=0
  status_line() {   # image expected-inputs
    local label; label=$(image_label "$1")
    if [ -z "$(image_id "$1")" ]; then echo "missing  $1"; ok=1
    elif [ "$label" = "$2" ]; then echo "current  $1  $(image_id "$1" | cut -c8-19)  inputs ${2:0:12}"
    else echo "stale    $1  (inputs ${label:0:12}, now ${2:0:12})"; ok=1; fi
  }
  status_line "$BASE_IMAGE" "$(base_inputs)"
  for c in "${COMPONENTS[@]}"; do status_line "$(image_of "$c")" "$(flower_inputs "$c")"; done
  status_line "$APP_IMAGE" "$(app_inputs)"
  return $ok
}

cmd_env() { mkdir -p "$WORK"; write_env; cat "$WORK/images.env"; }

case "${1:-}" in
  build) cmd_build ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 build|status|env" >&2; exit 2 ;;
esac
