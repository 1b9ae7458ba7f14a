//! Build script: compile the C part of the plugin ABI (variadic functions,
//! see src/plugins/cabi/shim.c), export the binary's `nbdkit_*` symbols to
//! the plugins it dlopens, and record the plugin directory.

fn main() {
    println!("cargo:rerun-if-changed=src/plugins/cabi/shim.c");
    println!("cargo:rerun-if-env-changed=NBDKIT_PLUGINDIR");
    cc::Build::new()
        .file("src/plugins/cabi/shim.c")
        .warnings(true)
        .compile("nbdkit_cabi_shim");
    // Plugins resolve nbdkit_error & co. against the executable.
    println!("cargo:rustc-link-arg-bins=-rdynamic");
    let plugindir = std::env::var("NBDKIT_PLUGINDIR")
        .unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/nbdkit/plugins".to_string());
    println!("cargo:rustc-env=NBDKIT_BUILD_PLUGINDIR={plugindir}");
}
