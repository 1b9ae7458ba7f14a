#!/bin/bash
# Install what the tests need (Debian packages), then build and run every
# test: unit tests and the integration suite that drives the real binary
# with qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio and socat.
set -euo pipefail
cd "$(dirname "$0")/.."

# xz-utils, gzip and bzip2 make the decompressing filters' test files; with
# pkg-config and the -dev packages, xz2 and flate2 link the system liblzma
# and zlib (without them the crates build bundled copies; bzip2-sys always
# does here, as Debian's libbz2-dev has no pkg-config file).
# lighttpd (and openssl, for its test certificate) serve the curl
# plugin's tests; libcurl4-openssl-dev is what the curl crate links.
# libnbd-dev is what the nbd plugin links (libnbd.so).
pkgs=(libnbd-bin python3-libnbd qemu-utils socat gnutls-bin fio jq systemd fdisk gdisk tar
      xz-utils gzip bzip2 pkg-config liblzma-dev zlib1g-dev
      lighttpd openssl libcurl4-openssl-dev libssl-dev libnbd-dev
      nbdkit nbdkit-plugin-dev nbdkit-plugin-python gcc e2fsprogs)
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
