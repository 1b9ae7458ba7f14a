//! The `nbdkit` binary: everything lives in the library; see `nbdkit::app`.

fn main() {
    std::process::exit(nbdkit::app::main(std::env::args_os().skip(1)));
}
