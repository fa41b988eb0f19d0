#!/bin/sh
# Build tools/vcsim/vcsim (our small main over govmomi's simulator) from Debian's packaged govmomi:
#   apt-get install -y golang-go golang-github-vmware-govmomi-dev
# GOPATH mode on purpose: the Debian package installs govmomi's source under /usr/share/gocode
# and we must not download modules. Skips the build when the binary is newer than main.go.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
binary="$here/vcsim"
if [ -x "$binary" ] && [ "$binary" -nt "$here/main.go" ] && [ "$binary" -nt "$here/build.sh" ]; then
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found; apt-get install -y golang-go golang-github-vmware-govmomi-dev" >&2
    exit 1
fi
gopath=${VCSIM_GOPATH:-/usr/share/gocode}
if [ ! -d "$gopath/src/github.com/vmware/govmomi/simulator" ]; then
    echo "build.sh: govmomi not found under $gopath; apt-get install -y golang-github-vmware-govmomi-dev" >&2
    exit 1
fi
# A writable build cache even when HOME is unset or read-only (CI containers).
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}"
cd "$here"
GO111MODULE=off GOPATH="$gopath" go build -o "$binary.tmp" . 2>&1 || { rm -f "$binary.tmp"; exit 1; }
mv "$binary.tmp" "$binary"
