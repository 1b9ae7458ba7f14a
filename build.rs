//! Build script:
//! - the C part of the plugin ABI (variadic functions, see
//!   src/plugins/cabi/shim.c), the binary's exported `nbdkit_*` symbols and
//!   the plugin directory;
//! - the manual pages, made from the markdown in docs/ with pandoc (Debian's
//!   `pandoc` package), into target/PROFILE/man/manN/ where the Debian
//!   package (`cargo deb`, see Cargo.toml) picks them up.
//!
//! Every page in docs/plugins/ and docs/filters/ becomes
//! nbdkit-NAME-plugin(1) or nbdkit-NAME-filter(1), so a new page needs no
//! change here. Without pandoc the build goes on without manual pages (and
//! says so); `cargo deb` then stops for want of them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One manual page: its markdown source, name and section.
struct Page {
    source: PathBuf,
    name: String,
    section: u8,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    c_abi();
    man_pages();
}

fn man_pages() {
    println!("cargo:rerun-if-changed=docs");
    println!("cargo:rerun-if-env-changed=PANDOC");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/PROFILE/build/nbdkit-HASH/out.
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        println!("cargo:warning=unexpected OUT_DIR layout: no manual pages");
        return;
    };
    let man_dir = profile_dir.join("man");

    let pandoc = std::env::var("PANDOC").unwrap_or_else(|_| "pandoc".into());
    let Some(found) = find_program(&pandoc) else {
        println!(
            "cargo:warning=pandoc not found: building without manual pages \
             (apt-get install pandoc; scripts/test.sh does)"
        );
        // Come back when pandoc is installed (scripts/demo builds before
        // scripts/test.sh installs it).
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if dir.is_absolute() && dir.is_dir() {
                println!("cargo:rerun-if-changed={}", dir.display());
            }
        }
        return;
    };
    // And again when it is upgraded.
    println!("cargo:rerun-if-changed={}", found.display());

    let pages = pages(Path::new("docs"));
    let _ = std::fs::remove_dir_all(&man_dir);
    for section in [1, 3] {
        std::fs::create_dir_all(man_dir.join(format!("man{section}")))
            .expect("create the manual page directory");
    }
    let filter = out_dir.join("links.lua");
    std::fs::write(&filter, LINKS_FILTER).expect("write the pandoc filter");

    // pandoc takes a moment to start: make a few pages at once.
    for chunk in pages.chunks(4) {
        std::thread::scope(|s| {
            for page in chunk {
                let (man_dir, filter, pandoc) = (&man_dir, &filter, &found);
                s.spawn(move || {
                    if let Err(e) = make_page(pandoc, filter, page, man_dir) {
                        panic!("manual page {}({}): {e}", page.name, page.section);
                    }
                });
            }
        });
    }
}

/// `program` as the shell would find it: a path, or a name looked up in PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runs(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file() && runs(p))
}

/// The pages to make: the server's own, then one per plugin and filter.
fn pages(docs: &Path) -> Vec<Page> {
    let mut pages = Vec::new();
    for (file, name, section) in [
        ("nbdkit.md", "nbdkit", 1),
        ("captive.md", "nbdkit-captive", 1),
        ("service.md", "nbdkit-service", 1),
        ("tls.md", "nbdkit-tls", 1),
        ("plugins.md", "nbdkit-plugin", 3),
    ] {
        let source = docs.join(file);
        if source.exists() {
            pages.push(Page {
                source,
                name: name.into(),
                section,
            });
        }
    }
    for kind in ["plugin", "filter"] {
        let dir = docs.join(format!("{kind}s"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        found.sort();
        for source in found {
            let stem = source.file_stem().unwrap().to_string_lossy().into_owned();
            pages.push(Page {
                source,
                name: format!("nbdkit-{stem}-{kind}"),
                section: 1,
            });
        }
    }
    pages
}

/// Markdown as pandoc's man writer wants it: the page's `# Title — what
/// it is` becomes the NAME section (`name - what it is`, for whatis and
/// apropos), and the `##` sections under it become the page's sections.
fn man_markdown(name: &str, text: &str) -> String {
    let mut lines = text.lines();
    let title = lines.next().unwrap_or("").trim_start_matches('#').trim();
    let what = title
        .split_once(" — ")
        .or_else(|| title.split_once(" - "))
        .map_or(title, |(_, w)| w)
        .replace('`', "");
    let mut out = format!("# NAME\n\n{name} - {what}\n\n");
    let mut in_fence = false;
    for line in lines {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if !in_fence && line.starts_with("##") {
            out.push_str(&line[1..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn make_page(pandoc: &Path, filter: &Path, page: &Page, man_dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(&page.source)
        .map_err(|e| format!("{}: {e}", page.source.display()))?;
    let input = man_markdown(&page.name, &text);
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let mut child = Command::new(pandoc)
        .args(["--from=gfm", "--to=man", "--standalone", "--lua-filter"])
        .arg(filter)
        .arg(format!("--metadata=title:{}", page.name.to_uppercase()))
        .arg(format!("--metadata=section:{}", page.section))
        .arg("--metadata=header:nbdkit")
        .arg(format!("--metadata=footer:nbdkit {version}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run pandoc: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("run pandoc: {e}"))?;
    writer
        .join()
        .expect("writer thread")
        .map_err(|e| format!("write to pandoc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pandoc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = man_dir
        .join(format!("man{}", page.section))
        .join(format!("{}.{}", page.name, page.section));
    std::fs::write(&path, &out.stdout).map_err(|e| format!("{}: {e}", path.display()))?;
    // Debian installs manual pages compressed (gzip -9n: no name or time
    // stamp, so the package is reproducible).
    let status = Command::new("gzip")
        .args(["-9nf"])
        .arg(&path)
        .status()
        .map_err(|e| format!("run gzip: {e}"))?;
    if !status.success() {
        return Err(format!("gzip {} failed", path.display()));
    }
    Ok(())
}

/// A pandoc filter: links to other pages of docs/ (relative paths, which
/// mean nothing in a manual page) keep their text and lose their target;
/// web addresses stay.
const LINKS_FILTER: &str = r#"
function Link(el)
  if el.target:match("^%a+://") or el.target:match("^mailto:") then
    return el
  end
  return el.content
end
"#;

/// The C plugin ABI: compile the variadic shim, export the binary's
/// `nbdkit_*` symbols to the plugins it dlopens, record the plugin directory.
fn c_abi() {
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
