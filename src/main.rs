//! The `nbdkit` binary: everything lives in the library; see `nbdkit::app`.

fn main() {
    // The C plugin ABI's exported functions must stay in the binary.
    std::hint::black_box(nbdkit::plugins::cabi::keep_exports());
    std::process::exit(nbdkit::app::main(std::env::args_os().skip(1)));
}
