#!/bin/bash
# Install what the tests need (Debian packages), then build and run every
# test: unit tests and the integration suite that drives the real binary
# with qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio and socat.
set -euo pipefail
cd "$(dirname "$0")/.."

# xz-utils, gzip and bzip2 make the decompressing filters' test files; the -dev
# packages let xz2, flate2 and bzip2 link the system libraries (without
# them the crates build their bundled copies).
pkgs=(libnbd-bin python3-libnbd qemu-utils socat gnutls-bin fio jq systemd fdisk tar
      xz-utils gzip bzip2 pkg-config liblzma-dev zlib1g-dev libbz2-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

# libnbd's Python module is Debian's: nbdsh and the test scripts need
# /usr/bin/python3, not another python3 earlier on PATH.
export PATH=/usr/bin:$PATH
cargo test --release --all-targets "$@"
