//! Startup, in nbdkit's order: parse the command line, answer the
//! informational options, load and configure the layers, bind the listening
//! sockets, fork for `--run` (before any thread exists), then serve until
//! told to stop and clean up.

use crate::cli::{self, Action, Immediate, Options, TlsMode, UnixSocket};
use crate::error::{Error, Result};
use crate::layers::Chain;
use crate::protocol::consts::{NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES};
use crate::server::captive::{self, RunVars};
use crate::server::fork::{self, Role};
use crate::server::listen::{self, Listener, PrivateDir};
use crate::server::negotiate::HandshakeConfig;
use crate::server::privs::Identity;
use crate::server::tls::{self, Tls};
use crate::server::uri::{make_uri, shell_quote, Endpoint, UriTls};
use crate::server::{activation, notify, single};
use crate::server::{quit, Server};
use crate::{filters, log, plugins, VERSION, VERSION_EXTRA};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default worker threads per connection (`-t`).
pub const DEFAULT_THREADS: usize = 16;

/// Run nbdkit with `args` (without the program name); returns the exit
/// status.
pub fn main<I>(args: I) -> i32
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            log::error(e.message());
            1
        }
    }
}

fn run<I>(args: I) -> Result<i32>
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut opts = cli::parse(args.iter().cloned())?;
    match opts.immediate {
        Some(Immediate::DumpConfig) => return print_out(&dump_config()),
        Some(Immediate::LongOptions) => return print_out(&cli::long_options()),
        Some(Immediate::ShortOptions) => return print_out(&cli::short_options()),
        None => {}
    }
    log::set_verbose(opts.verbose);
    log::debug(format!("nbdkit {VERSION} ({VERSION_EXTRA})"));
    let log_choice = log::parse_destination(opts.log.as_deref())?;
    let default_log = log_choice.is_none();
    if let Some(dest) = log_choice {
        log::set_destination(dest);
    }
    // Before anything could start a child that would inherit LISTEN_*.
    let activated = activation::detect()?;

    let Some(plugin_name) = opts.plugin.clone() else {
        return match opts.action {
            Action::Help => print_out(cli::USAGE),
            Action::Version => print_out(&format!("nbdkit {VERSION} ({VERSION_EXTRA})\n")),
            Action::DumpPlugin => Err(Error::config(
                "use 'nbdkit plugin --dump-plugin' or 'nbdkit /path/to/plugin.so --dump-plugin' \
                 or if you want to find out about the server use --dump-config",
            )),
            Action::Serve => Err(Error::config(
                "no plugins given on the command line. Use 'nbdkit --help' or read the nbdkit(1) \
                 manual page for documentation.",
            )),
        };
    };
    check_unsupported(&opts)?;
    if opts.action == Action::Serve || opts.action == Action::DumpPlugin {
        check_conflicts(&opts)?;
        if activated.is_some() {
            activation::check_conflicts(&opts)?;
        }
    }
    let identity = Identity::resolve(opts.user.as_deref(), opts.group.as_deref())?;
    let handshake_timeout = opts
        .timeout
        .as_deref()
        .map(|t| crate::parse::parse_delay("--timeout", t))
        .transpose()?;

    plugins::cabi::set_stdio_safe(!opts.single);
    let mut chain = load_chain(&opts, &plugin_name, &args)?;
    check_debug_flags(&opts, &mut chain)?;
    match opts.action {
        Action::Help => return print_out(&help(&chain)),
        Action::Version => return print_out(&versions(&chain)),
        _ => {}
    }
    for (i, p) in opts.params.iter().enumerate() {
        // As nbdkit does: a plugin without a magic key takes a bare first
        // parameter as `script=` (`nbdkit python script.py`).
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str());
        let bare = !bytes.iter().position(|&b| b == b'=').is_some_and(|i| {
            std::str::from_utf8(&bytes[..i]).is_ok_and(crate::layers::is_config_key)
        });
        // (Only for loaded plugins: none of ours takes `script=` without
        // making it the magic key, so a built-in gets the clearer
        // "expecting key=value" error.)
        let loaded = chain.plugin.shared_object().is_some();
        if i == 0 && bare && loaded && chain.plugin.magic_config_key().is_none() {
            let mut script = std::ffi::OsString::from("script=");
            script.push(p);
            chain.config_param(script)?;
        } else {
            chain.config_param(p)?;
        }
    }
    if opts.action == Action::DumpPlugin {
        return print_out(&dump_plugin(&chain));
    }
    chain.config_complete()?;
    let thread_model = chain.thread_model();
    log::debug(format!("using thread model: {}", thread_model.name()));
    let stack = chain.into_stack();
    stack.get_ready()?;
    let tls = tls::init(&opts)?;

    if opts.exit_with_parent {
        arm_exit_with_parent()?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));

    // --run implies a private Unix socket unless a port was given.
    if opts.run.is_some() && opts.unix.is_none() && opts.port.is_none() && !opts.vsock {
        opts.unix = Some(UnixSocket::Private);
    }
    let private_dir = match opts.unix {
        Some(UnixSocket::Private) => Some(PrivateDir::create()?),
        _ => None,
    };
    // Socket activation and -s run in the foreground, and have no URI: the
    // listener is not ours.
    let service_managed = activated.is_some() || opts.single;
    let (listeners, endpoint) = match activated {
        Some(a) => (a.listeners()?, None),
        None if opts.single => (Vec::new(), None),
        None => bind(&opts, private_dir.as_ref()).map(|(l, e)| (l, Some(e)))?,
    };
    let uri = endpoint.as_ref().map(|e| {
        make_uri(
            e,
            std::os::unix::ffi::OsStrExt::as_bytes(opts.exportname.as_os_str()),
            uri_tls(&opts, tls.as_deref()),
        )
    });
    if let Some(uri) = &uri {
        log::debug(format!("NBD URI: {uri}"));
        if opts.print_uri {
            print_uri(uri)?;
        }
    }
    let single_stream = if opts.single {
        Some(single::take_stdio()?)
    } else {
        None
    };

    // Fork off the server for --run (the parent supervises COMMAND) or to go
    // into the background (the parent exits).  No thread exists yet: plugins
    // start theirs in after_fork.
    let background =
        !(opts.foreground || opts.run.is_some() || opts.exit_with_parent || service_managed);
    let mut ready = None;
    if opts.run.is_some() || background {
        match fork::fork(opts.run.is_some())? {
            Role::Parent { server, ready } => {
                drop(listeners);
                plugins::cabi::parent_after_fork();
                let rc = match &opts.run {
                    Some(command) => {
                        let endpoint = endpoint.expect("--run is refused without a URI");
                        let vars = run_vars(
                            &opts,
                            &endpoint,
                            uri.as_deref().unwrap_or(""),
                            tls.as_deref(),
                        );
                        let rc = captive::supervise(server, ready, &vars, command);
                        drop(private_dir);
                        rc
                    }
                    None => {
                        // The daemon owns the private socket directory now.
                        std::mem::forget(private_dir);
                        match fork::wait_ready(server, ready) {
                            Ok(()) => {
                                notify::ready(server.as_raw() as u32);
                                0
                            }
                            Err(rc) => rc,
                        }
                    }
                };
                return Ok(rc);
            }
            Role::Server(r) => ready = Some(r),
        }
        if background {
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
        }
    }

    identity.assume()?;
    quit::install_signal_handlers()?;
    redirect_stdio_to_null()?;
    stack.after_fork()?;
    if let Some(pidfile) = &opts.pidfile {
        write_pidfile(pidfile)?;
    }
    if let Some(ready) = ready {
        ready.signal();
        // A daemon's errors were visible until now; afterwards they go to
        // syslog (unless --log says otherwise) and stderr to /dev/null
        // unless -v keeps it for debug messages.
        if background {
            if default_log {
                log::set_destination(log::Destination::Syslog);
            }
            if !opts.verbose {
                redirect_stderr_to_null()?;
            }
        }
    } else {
        notify::ready(std::process::id());
    }

    let handshake_flags = (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)
        & opts.mask_handshake.unwrap_or(u32::MAX) as u16;
    let server = Arc::new(Server {
        handshake: HandshakeConfig {
            oldstyle: opts.oldstyle,
            readonly: opts.readonly,
            no_sr: opts.no_sr,
            no_mc: opts.no_mc,
            handshake_flags,
            thread_model,
            tls,
        },
        thread_model,
        threads: if opts.threads == 0 {
            DEFAULT_THREADS
        } else {
            opts.threads
        },
        keepalive: opts.keepalive,
        timeout: handshake_timeout,
        stack,
    });
    let result = match single_stream {
        Some(stream) => single::serve(&server, stream),
        None => crate::server::serve(server.clone(), listeners),
    };
    server.stack.cleanup();
    drop(private_dir);
    result.map(|()| 0)
}

fn print_out(s: &str) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io(e, "stdout"))?;
    Ok(0)
}

/// Options parsed for compatibility whose behaviour is not built yet: refuse
/// them clearly rather than pretend.
fn check_unsupported(o: &Options) -> Result<()> {
    let not_yet = |what: &str| {
        Err(Error::config(format!(
            "{what} is not supported by this nbdkit yet"
        )))
    };
    if o.selinux_label.is_some() {
        return not_yet("--selinux-label");
    }
    if o.swap {
        return not_yet("--swap");
    }
    Ok(())
}

fn check_conflicts(o: &Options) -> Result<()> {
    let conflict = (o.port.is_some() && o.unix.is_some())
        || (o.single
            && (o.port.is_some()
                || o.unix.is_some()
                || o.run.is_some()
                || o.vsock
                || o.action == Action::DumpPlugin))
        || (o.run.is_some() && o.action == Action::DumpPlugin)
        || (o.vsock && o.unix.is_some());
    if conflict {
        return Err(Error::config(
            "--dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination",
        ));
    }
    if o.oldstyle && o.tls == Some(TlsMode::Require) {
        return Err(Error::config(
            "cannot use oldstyle protocol (-o) and require TLS",
        ));
    }
    Ok(())
}

fn load_chain(o: &Options, plugin_name: &str, args: &[std::ffi::OsString]) -> Result<Chain> {
    let plugin = match plugins::new_plugin(plugin_name) {
        Some(p) => p,
        None => match plugins::cabi::find(plugin_name) {
            plugins::cabi::Found::Script(script) => {
                let rest = plugins::cabi::script_args(args);
                return Err(plugins::cabi::exec_script(&script, plugin_name, &rest));
            }
            plugins::cabi::Found::SharedObject(path) => {
                if plugins::cabi::is_short_name(plugin_name) && !path.exists() {
                    return Err(Error::config(format!(
                        "cannot open plugin '{}': not a built-in plugin (built-in plugins: {}), \
                         and {} does not exist. \
                         Use 'nbdkit --help' or read the nbdkit(1) manual page for documentation.",
                        log::escape(plugin_name),
                        plugins::NAMES.join(", "),
                        path.display()
                    )));
                }
                plugins::cabi::load(&path)?
            }
        },
    };
    for name in &o.filters {
        if filters::new_filter(name).is_none()
            && (!plugins::cabi::is_short_name(name)
                || plugins::cabi::plugindir()
                    .join(format!("../filters/nbdkit-{name}-filter.so"))
                    .exists())
        {
            return Err(Error::config(format!(
                "cannot open filter '{}': C filters (.so) cannot be loaded: nbdkit's filter ABI \
                 is tied to one exact nbdkit version, so this nbdkit only runs its built-in \
                 filters ({})",
                log::escape(name),
                if filters::NAMES.is_empty() {
                    "none".to_string()
                } else {
                    filters::NAMES.join(", ")
                }
            )));
        }
    }
    let mut filters = Vec::new();
    for name in &o.filters {
        let f = filters::new_filter(name).ok_or_else(|| {
            let known = if filters::NAMES.is_empty() {
                "none".to_string()
            } else {
                filters::NAMES.join(", ")
            };
            Error::config(format!(
                "cannot open filter '{}': not a built-in filter (built-in filters: {known})",
                log::escape(name)
            ))
        })?;
        filters.push(f);
    }
    if log::verbose() {
        let mut names: Vec<String> = filters
            .iter()
            .map(|f| format!("{} (filter)", f.name()))
            .collect();
        names.push(format!("{} (plugin)", plugin.name()));
        log::debug(format!("layers: {}", names.join(" -> ")));
    }
    Ok(Chain { filters, plugin })
}

/// `-D NAME.FLAG=N`: check the syntax and hand the flag to the filter it
/// names; a flag no layer knows is reported as unused, as nbdkit does.
fn check_debug_flags(o: &Options, chain: &mut Chain) -> Result<()> {
    for flag in &o.debug_flags {
        let parsed = flag.split_once('=').and_then(|(name, value)| {
            let (module, f) = name.split_once('.')?;
            (!module.is_empty() && !f.is_empty() && !value.is_empty()).then_some((module, f))
        });
        let Some((module, f)) = parsed else {
            return Err(Error::config(format!(
                "-D ({flag}): must have the format NAME.FLAG=N"
            )));
        };
        // Server flags we accept: TLS session details are always in the
        // -v output, and OpenSSL has no GnuTLS-style log levels.
        if matches!(
            flag.split_once('=').map(|x| x.0),
            Some("nbdkit.tls.session" | "nbdkit.tls.log")
        ) {
            continue;
        }
        // The environment as debug lines, escaped (nbdkit >= 1.36).
        if let Some(v) = flag.strip_prefix("nbdkit.environ=") {
            let on = crate::parse::parse_unsigned("-D nbdkit.environ", v, u32::MAX as u64)?;
            if on != 0 {
                for (name, value) in std::env::vars_os() {
                    log::debug(format!(
                        "{}={}",
                        name.to_string_lossy(),
                        value.to_string_lossy()
                    ));
                }
            }
            continue;
        }
        let mut claimed = false;
        for x in chain.filters.iter_mut().filter(|x| x.name() == module) {
            claimed |= x.debug_flag(f, &flag[module.len() + f.len() + 2..])?;
        }
        if module == chain.plugin.name() {
            claimed |= chain
                .plugin
                .debug_flag(f, &flag[module.len() + f.len() + 2..])?;
        }
        if claimed {
            continue;
        }
        let loaded = module == chain.plugin.name()
            || module == "nbdkit"
            || chain.filters.iter().any(|x| x.name() == module);
        if loaded {
            log::warning(format!(
                "-D {module}.{f}: {module} does not contain a global variable called {}_debug_{}",
                module,
                f.replace('.', "_")
            ));
        } else {
            log::warning(format!("-D {module}.{f}: {module} was not used"));
        }
    }
    Ok(())
}

fn binary_path() -> PathBuf {
    std::fs::canonicalize("/proc/self/exe")
        .or_else(|_| std::env::current_exe())
        .unwrap_or_else(|_| PathBuf::from("nbdkit"))
}

/// libdir and sbindir for a binary installed under `prefix`. Installed
/// as /usr/bin/nbdkit (the Debian package), they are Debian's own nbdkit's:
/// the multiarch libdir, where Debian's nbdkit-plugin-* packages put their
/// plugins, and sbindir=/usr/bin. Anywhere else (a build tree, /usr/local)
/// they follow the prefix.
fn install_dirs(prefix: &Path) -> (PathBuf, PathBuf) {
    if prefix == Path::new("/usr") {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        (prefix.join("lib").join(triplet), prefix.join("bin"))
    } else {
        (prefix.join("lib"), prefix.join("sbin"))
    }
}

fn dump_config() -> String {
    let binary = binary_path();
    let bindir = binary.parent().unwrap_or(Path::new("/")).to_path_buf();
    let prefix = bindir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (libdir, sbindir) = install_dirs(&prefix);
    let (major, minor) = {
        let mut it = VERSION.split('.');
        (it.next().unwrap_or("1"), it.next().unwrap_or("0"))
    };
    let lines = [
        ("binary", binary.display().to_string()),
        ("bindir", bindir.display().to_string()),
        ("exit_with_parent", "yes".into()),
        (
            "filterdir",
            libdir.join("nbdkit/filters").display().to_string(),
        ),
        ("host_cpu", std::env::consts::ARCH.into()),
        ("host_os", "linux-gnu".into()),
        ("libdir", libdir.display().to_string()),
        ("mandir", prefix.join("share/man").display().to_string()),
        ("max_api_version", "2".into()),
        ("name", "nbdkit".into()),
        (
            "plugindir",
            plugins::cabi::plugindir().display().to_string(),
        ),
        (
            "root_tls_certificates_dir",
            tls::ROOT_CERTIFICATES_DIR.into(),
        ),
        ("run_default_socket", "Unix".into()),
        ("sbindir", sbindir.display().to_string()),
        ("selinux", "no".into()),
        ("soext", "so".into()),
        ("sysconfdir", "/etc".into()),
        ("timeout_option", "yes".into()),
        ("tls", "yes".into()),
        ("version", VERSION.into()),
        ("version_extra", VERSION_EXTRA.into()),
        ("version_major", major.into()),
        ("version_minor", minor.into()),
        ("vsock_option", "yes".into()),
        ("zstd", "yes".into()),
    ];
    lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

fn help(chain: &Chain) -> String {
    let mut s = String::from(cli::USAGE);
    let path = binary_path().display().to_string();
    for f in &chain.filters {
        s.push('\n');
        s.push_str(&format!("filter: {}", f.name()));
        if let Some(l) = f.longname() {
            s.push_str(&format!(" ({l})"));
        }
        s.push_str(&format!("\n({path})\n"));
        push_lines(&mut s, f.description());
        push_lines(&mut s, f.config_help());
    }
    let p = &chain.plugin;
    let path = p.shared_object().map_or(path, |so| so.path);
    s.push('\n');
    s.push_str(&format!("plugin: {}", p.name()));
    if let Some(l) = p.longname() {
        s.push_str(&format!(" ({l})"));
    }
    s.push_str(&format!("\n({path})\n"));
    push_lines(&mut s, p.description());
    push_lines(&mut s, p.config_help());
    s
}

fn push_lines(s: &mut String, text: &str) {
    if !text.is_empty() {
        s.push_str(text.trim_end_matches('\n'));
        s.push('\n');
    }
}

fn versions(chain: &Chain) -> String {
    let mut s = format!("nbdkit {VERSION} ({VERSION_EXTRA})\n");
    for f in &chain.filters {
        s.push_str(&format!("{} {}\n", f.name(), f.version()));
    }
    s.push_str(&format!(
        "{} {}\n",
        chain.plugin.name(),
        chain.plugin.version()
    ));
    s
}

fn dump_plugin(chain: &Chain) -> String {
    let p = &chain.plugin;
    let path = binary_path().display().to_string();
    let mut s = String::new();
    if let Some(so) = p.shared_object() {
        s.push_str(&format!(
            "path={}\nname={}\nversion={}\napi_version={}\nstruct_size={}\n",
            so.path,
            p.name(),
            p.version(),
            so.api_version,
            so.struct_size
        ));
        s.push_str(&format!(
            "max_thread_model={}\nthread_model={}\nerrno_is_preserved={}\n",
            so.max_thread_model.name(),
            chain.thread_model().name(),
            u8::from(so.errno_is_preserved)
        ));
    } else {
        s.push_str(&format!(
            "path={path}\nname={}\nversion={}\napi_version=2\n",
            p.name(),
            p.version()
        ));
        s.push_str(&format!(
            "max_thread_model={}\nthread_model={}\nerrno_is_preserved=1\n",
            p.thread_model().name(),
            chain.thread_model().name()
        ));
    }
    if let Some(k) = p.magic_config_key() {
        s.push_str(&format!("magic_config_key={k}\n"));
    }
    for cb in p.callbacks() {
        s.push_str(&format!("has_{cb}=1\n"));
    }
    for line in p.dump_plugin() {
        s.push_str(&line);
        s.push('\n');
    }
    for f in &chain.filters {
        s.push_str(&format!("{0}_path={path}\n{0}_name={0}\n", f.name()));
        for line in f.dump_plugin() {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s
}

/// Bind the listening sockets the options ask for.
fn bind(o: &Options, private: Option<&PrivateDir>) -> Result<(Vec<Listener>, Endpoint)> {
    if let Some(unix) = &o.unix {
        let path = match unix {
            UnixSocket::Path(p) => p.clone(),
            UnixSocket::Private => private.expect("private dir exists for -U -").socket_path(),
        };
        let l = listen::bind_unix(&path)?;
        return Ok((vec![l], Endpoint::Unix(path)));
    }
    if o.vsock {
        let port = match &o.port {
            Some(p) => listen::parse_vsock_port(p)?,
            None => listen::DEFAULT_PORT.into(),
        };
        let l = listen::bind_vsock(port)?;
        let shown = (o.port.is_some() || o.run.is_some()).then_some(port);
        return Ok((vec![l], Endpoint::Vsock(shown)));
    }
    let port = match &o.port {
        Some(p) => listen::parse_port(p)?,
        None => listen::DEFAULT_PORT,
    };
    let listeners = listen::bind_tcp(o.ipaddr.as_deref(), port, o.family)?;
    let actual = match listeners.first() {
        Some(Listener::Tcp(l)) => l.local_addr().map(|a| a.port()).unwrap_or(port),
        _ => port,
    };
    let shown = (o.port.is_some() || o.run.is_some()).then_some(actual);
    Ok((listeners, Endpoint::Tcp(shown)))
}

fn print_uri(uri: &str) -> Result<()> {
    let quoted = shell_quote(uri);
    print_out(&format!(
        "{uri}\nShell-quoted URI: {quoted}\nCommand to query the NBD endpoint:\n  nbdinfo {quoted}\n"
    ))
    .map(|_| ())
}

/// How the URI shows TLS: only when it is required, naming the credentials
/// actually in use (the PSK file wins over certificates, as in the server).
fn uri_tls<'a>(o: &'a Options, tls: Option<&Tls>) -> UriTls<'a> {
    match tls {
        Some(t) if t.require => match (&o.tls_psk, &o.tls_certificates) {
            (Some(psk), _) => UriTls::PskFile(psk),
            (None, Some(dir)) => UriTls::Certificates(dir),
            (None, None) => UriTls::Required,
        },
        _ => UriTls::Off,
    }
}

/// The values `--run` gives COMMAND.
fn run_vars(o: &Options, endpoint: &Endpoint, uri: &str, tls: Option<&Tls>) -> RunVars {
    RunVars {
        tls: tls.map(|t| if t.require { 2 } else { 1 }),
        tls_certificates: o.tls_certificates.clone().unwrap_or_default(),
        tls_psk: o.tls_psk.clone().unwrap_or_default(),
        uri: uri.to_string(),
        exportname: o.exportname.clone(),
        port: match endpoint {
            Endpoint::Tcp(Some(p)) => p.to_string(),
            Endpoint::Vsock(Some(p)) => p.to_string(),
            _ => String::new(),
        },
        unixsocket: match endpoint {
            Endpoint::Unix(p) => p.clone().into_os_string(),
            _ => std::ffi::OsString::new(),
        },
    }
}

fn dev_null() -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io(e, "/dev/null"))
}

fn redirect_stderr_to_null() -> Result<()> {
    nix::unistd::dup2_stderr(dev_null()?).map_err(|e| Error::os(e, "dup2"))
}

/// Point stdin and stdout at /dev/null: the server must not read from or
/// write to the terminal or pipe it was started from.
fn redirect_stdio_to_null() -> Result<()> {
    let null = dev_null()?;
    nix::unistd::dup2_stdin(&null).map_err(|e| Error::os(e, "dup2"))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| Error::os(e, "dup2"))
}

/// Write the pidfile atomically (temporary file, then rename), so a reader
/// never sees it empty or half-written.
fn write_pidfile(path: &Path) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(e, path.display())
        })?;
    log::debug(format!("written pidfile {}", path.display()));
    Ok(())
}

/// `--exit-with-parent`: ask the kernel for SIGTERM when the parent dies,
/// and notice if it died while we were asking.  A parent that is PID 1 is
/// fine (a container's init may start us), as with nbdkit.
fn arm_exit_with_parent() -> Result<()> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM))
        .map_err(|e| Error::os(e, "prctl: PR_SET_PDEATHSIG"))?;
    if nix::unistd::getppid() != parent {
        return Err(Error::config(
            "--exit-with-parent: the parent process has already exited",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_dirs_follow_debian_under_usr() {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        assert_eq!(
            install_dirs(Path::new("/usr")),
            (
                PathBuf::from(format!("/usr/lib/{triplet}")),
                PathBuf::from("/usr/bin")
            )
        );
        assert_eq!(
            install_dirs(Path::new("/usr/local")),
            (
                PathBuf::from("/usr/local/lib"),
                PathBuf::from("/usr/local/sbin")
            )
        );
    }
}
