# Shared by scripts/demo, scripts/test.sh and .ci/run: install what is
# missing, as root or through sudo, and check the Rust toolchain.

# The oldest Rust that builds nbdkit (Cargo.toml's rust-version).
rust_min=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

# sudo only when not root: minimal images have no sudo, and root needs none.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "$0: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

# install_debs PKG...: apt-get install the Debian packages not yet installed.
install_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "$0: installing ${missing[*]}" >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  fi
}

# check_rust: cargo is there and new enough; say how to get it otherwise.
check_rust() {
  if ! command -v cargo >/dev/null; then
    echo "$0: no cargo on PATH: install Rust $rust_min or later with rustup (https://rustup.rs), then run . ~/.cargo/env" >&2
    exit 1
  fi
  local have
  have=$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')
  if [ "$(printf '%s\n%s\n' "$rust_min" "$have" | sort -V | head -1)" != "$rust_min" ]; then
    echo "$0: rustc $have is older than $rust_min, the oldest that builds nbdkit: run rustup update stable" >&2
    exit 1
  fi
}

# Debian packages the build needs: a C compiler and linker (for the -sys
# crates, the C plugin ABI shim and linking), pkg-config and the libraries' -dev
# packages, and CA certificates for cargo to fetch crates.  libnbd is not
# linked: the nbd plugin loads libnbd.so.0 (package libnbd0) when it starts.
build_debs=(gcc libc6-dev pkg-config libssl-dev libcurl4-openssl-dev liblzma-dev zlib1g-dev
            ca-certificates)
