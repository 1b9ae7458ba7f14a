#!/bin/bash
# Install what the tests need (Debian packages), then build and run every
# test: unit tests and the integration suite that drives the real binary
# with qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio and socat.
#
# Run as root, or as a user with sudo to install packages: a few tests need
# root and fail saying so (README.md lists them).
# `scripts/test.sh --install-only` installs and stops; other arguments go
# to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
check_rust

# xz-utils, gzip and bzip2 make the decompressing filters' test files; with
# pkg-config and the -dev packages, xz2 and flate2 link the system liblzma
# and zlib (without them the crates build bundled copies; bzip2-sys always
# does here, as Debian's libbz2-dev has no pkg-config file).
# Beyond the build's own packages (scripts/lib.sh, with
# libcurl4-openssl-dev, which the curl crate links): lighttpd (and
# openssl, for its test certificate) serve the curl plugin's tests. pandoc makes the manual pages (build.rs), dpkg-dev and binutils let
# cargo-deb work out the package's dependencies and strip the binary, and
# man-db reads the packaged pages back; nbdkit-plugin-python is the Debian
# plugin the package test loads (it brings Debian's C nbdkit, which the
# side-by-side tests compare against). libnbd0 is what the nbd plugin
# loads (libnbd.so.0); nbdkit-plugin-dev's header and gcc build the C test
# plugins; gdisk checks the partitioning plugin's GPT; e2fsprogs makes
# tmpdisk's and ondemand's file systems. curl (the program) fetches from the
# test web server, iproute2's ss shows TCP keepalive, and file lets nbdinfo
# describe an export's content.
pkgs=(libnbd-bin python3-libnbd qemu-utils socat gnutls-bin fio jq systemd fdisk gdisk tar
      xz-utils gzip bzip2 util-linux mount libnbd0 e2fsprogs
      lighttpd openssl pandoc dpkg-dev binutils man-db
      nbdkit nbdkit-plugin-dev nbdkit-plugin-python gcc curl iproute2 file)
install_debs "${build_debs[@]}" "${pkgs[@]}"

# .ci/run checks formatting and lints: rustup's minimal profile leaves
# these components out.
for c in rustfmt clippy; do
  if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$c"
  fi
done
# The package tests (tests/integration/package.rs) build the .deb.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
[ "${1:-}" = --install-only ] && exit 0

# libnbd's Python module is Debian's: nbdsh and the test scripts need
# /usr/bin/python3, not another python3 earlier on PATH.
export PATH=/usr/bin:$PATH
cargo test --release --all-targets "$@"
