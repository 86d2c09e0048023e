#!/usr/bin/env bash
# Builds the wxgate image here, without a registry or a container runtime:
#   bash scripts/image-local.sh [TAG]        (default tag wxgate:local)
# 1. cargo build --release -p wxgate;
# 2. a context whose rootfs/ holds the binary, the shared libraries ldd lists (glibc: libc,
#    libm, libgcc_s, the loader), CA certificates (rediss:// without tls_ca_file), passwd and
#    group entries for the user 65532 and an empty /tmp;
# 3. buildah --storage-driver vfs bud -f Dockerfile.scratch (FROM scratch + COPY: no base
#    image to pull, no RUN step to execute);
# 4. runs it with `buildah run --isolation chroot` (no OCI runtime works here): --help,
#    check-config, then `serve` on a free loopback port, GET /healthz and /readyz, SIGTERM;
# 5. writes a docker-archive next to the build (`docker load -i` / `podman load -i` it).
# Needs root (buildah with vfs storage), curl and python3; installs buildah from Debian when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-wxgate:local}
target=${CARGO_TARGET_DIR:-$PWD/target}
buildah=(buildah --storage-driver vfs)

if ! command -v buildah >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi

cargo build --release --locked -p wxgate
bin="$target/release/wxgate"

ctx="$target/image-scratch"
rm -rf "$ctx"
root="$ctx/rootfs"
install -D -m 0755 "$bin" "$root/usr/local/bin/wxgate"
# Every library the binary links, at the path the loader looks for it (/lib64/ld-linux...,
# /lib/x86_64-linux-gnu/...); copied, not linked.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  cp --parents -L "$lib" "$root"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
echo "context: $(find "$root" -type f | sed "s|^$root||" | sort | paste -sd' ')"

"${buildah[@]}" bud --quiet -f Dockerfile.scratch -t "$tag" "$ctx" >/dev/null
echo "built $tag: $("${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag")"
"${buildah[@]}" inspect --format 'user {{.OCIv1.Config.User}}, entrypoint {{.OCIv1.Config.Entrypoint}}, cmd {{.OCIv1.Config.Cmd}}{{"\n"}}' "$tag"

# Run it. An OCI runtime cannot start containers on this kind of machine (crun: "cgroups in
# hybrid mode not supported"), so run with buildah's chroot isolation: the image's own
# filesystem, user (65532) and environment, the host's network.
ctr=$("${buildah[@]}" from "$tag")
cfg=$(mktemp -d)
chmod 0755 "$cfg"   # readable by the image's user 65532
cleanup() { "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$cfg"; }
trap cleanup EXIT
run() { "${buildah[@]}" run --isolation chroot --network host -v "$cfg:/etc/wxgate:ro" "$ctr" -- "$@"; }
run /usr/local/bin/wxgate --version
run /usr/local/bin/wxgate --help >/dev/null && echo "wxgate --help: ok"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# No apps, in-memory state, WeChat pointed at a closed loopback port: nothing leaves the machine.
cat >"$cfg/wxgate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[upstream]
base_url = "http://127.0.0.1:9"
TOML
run /usr/local/bin/wxgate check-config /etc/wxgate/wxgate.toml
run /usr/local/bin/wxgate serve --config /etc/wxgate/wxgate.toml >"$cfg/serve.log" 2>&1 &
server=$!
# buildah run does not pass SIGTERM on in chroot isolation: find wxgate among its descendants
# to signal it directly, as Kubernetes would.
descendants() { local p; for p in $(ps -o pid= --ppid "$1"); do echo "$p"; descendants "$p"; done; }
wxgate_pid() { local p; for p in $(descendants "$server"); do [ "$(ps -o comm= -p "$p")" != wxgate ] || echo "$p"; done; }
pid=""
for _ in $(seq 50); do
  pid=$(wxgate_pid | head -1)
  [ -n "$pid" ] && curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
trap '[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null; cleanup' EXIT
healthz=$(curl -fsS "http://127.0.0.1:$port/healthz")
readyz=$(curl -fsS "http://127.0.0.1:$port/readyz")
echo "GET /healthz: $healthz"
echo "GET /readyz: $readyz"
echo "server process: $(ps -o pid=,user=,args= -p "$pid")"
kill -TERM "$pid"
status=0; wait "$server" || status=$?
pid=""
echo "serve after SIGTERM: exit status $status; last log line: $(tail -1 "$cfg/serve.log")"
[ "$status" -eq 0 ]

archive="$target/wxgate-image.tar"
rm -f "$archive"
"${buildah[@]}" push --quiet "$tag" "docker-archive:$archive:$tag"
echo "image archive: $archive ($(du -h "$archive" | cut -f1))"
