//! The command line, parsed as nbdkit parses it (GNU getopt with
//! permutation): `nbdkit [OPTIONS] PLUGIN [[KEY=]VALUE ...] [OPTIONS]`.
//!
//! Options may follow the plugin and its parameters, short options bundle
//! (`-fv`, `-U-`), long options take `--opt=VALUE` or `--opt VALUE` and may be
//! abbreviated to a unique prefix, and `--` ends option processing.  This
//! module only turns arguments into an [`Options`] value; checking option
//! combinations and acting on them is the caller's job.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// The global handshake flags `--mask-handshake` may clear.
const HANDSHAKE_FLAGS: u32 = (crate::protocol::consts::NBD_FLAG_FIXED_NEWSTYLE
    | crate::protocol::consts::NBD_FLAG_NO_ZEROES) as u32;

/// Which address family `-4`/`-6` restricts TCP listening to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

/// `-U PATH` or `-U -` (a private socket in a fresh temporary directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocket {
    Path(PathBuf),
    Private,
}

/// What the invocation asks for besides serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Serve,
    Help,
    Version,
    DumpPlugin,
}

/// Immediate actions that end parsing as soon as they are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Immediate {
    DumpConfig,
    LongOptions,
    ShortOptions,
}

/// TLS mode (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Off,
    On,
    Require,
}

/// Everything the command line says.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub action: Action,
    pub immediate: Option<Immediate>,
    pub family: Family,
    pub debug_flags: Vec<String>,
    pub exit_with_parent: bool,
    /// `-e`: any bytes, as C nbdkit accepts (only `$exportname` and the URI use it).
    pub exportname: OsString,
    pub filters: Vec<String>,
    pub foreground: bool,
    pub group: Option<String>,
    pub ipaddr: Option<String>,
    pub keepalive: bool,
    pub log: Option<String>,
    pub mask_handshake: Option<u32>,
    pub no_mc: bool,
    pub no_sr: bool,
    pub oldstyle: bool,
    pub pidfile: Option<PathBuf>,
    pub port: Option<String>,
    pub print_uri: bool,
    pub readonly: bool,
    pub run: Option<String>,
    pub selinux_label: Option<String>,
    pub single: bool,
    pub swap: bool,
    /// Worker threads per connection; 0 means the default (16).
    pub threads: usize,
    pub timeout: Option<String>,
    pub tls: Option<TlsMode>,
    pub tls_certificates: Option<String>,
    pub tls_psk: Option<String>,
    pub tls_verify_peer: bool,
    pub unix: Option<UnixSocket>,
    pub user: Option<String>,
    pub verbose: bool,
    pub vsock: bool,
    /// The plugin name (first bare argument).
    pub plugin: Option<String>,
    /// Plugin and filter parameters, in order (`key=value` or bare values);
    /// any bytes, so that paths need not be UTF-8.
    pub params: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Ipv4,
    Ipv6,
    Debug,
    DumpConfig,
    DumpPlugin,
    ExitWithParent,
    ExportName,
    Filter,
    Foreground,
    Group,
    Help,
    IpAddr,
    Keepalive,
    Log,
    LongOptions,
    MaskHandshake,
    Newstyle,
    NoMc,
    NoSr,
    Oldstyle,
    Pidfile,
    Port,
    PrintUri,
    Readonly,
    Run,
    SelinuxLabel,
    ShortOptions,
    Single,
    Swap,
    Threads,
    Timeout,
    Tls,
    TlsCertificates,
    TlsPsk,
    TlsVerifyPeer,
    Unix,
    User,
    Verbose,
    Version,
    Vsock,
}

/// Long options: name, meaning, whether it takes a value.
const LONG_OPTIONS: &[(&str, Opt, bool)] = &[
    ("ipv4-only", Opt::Ipv4, false),
    ("ipv6-only", Opt::Ipv6, false),
    ("debug", Opt::Debug, true),
    ("dump-config", Opt::DumpConfig, false),
    ("dump-plugin", Opt::DumpPlugin, false),
    ("exit-with-parent", Opt::ExitWithParent, false),
    ("export", Opt::ExportName, true),
    ("export-name", Opt::ExportName, true),
    ("exportname", Opt::ExportName, true),
    ("filter", Opt::Filter, true),
    ("foreground", Opt::Foreground, false),
    ("no-fork", Opt::Foreground, false),
    ("group", Opt::Group, true),
    ("help", Opt::Help, false),
    ("ip-addr", Opt::IpAddr, true),
    ("ipaddr", Opt::IpAddr, true),
    ("keepalive", Opt::Keepalive, false),
    ("keep-alive", Opt::Keepalive, false),
    ("log", Opt::Log, true),
    ("long-options", Opt::LongOptions, false),
    ("mask-handshake", Opt::MaskHandshake, true),
    ("new-style", Opt::Newstyle, false),
    ("newstyle", Opt::Newstyle, false),
    ("no-mc", Opt::NoMc, false),
    ("no-meta-contexts", Opt::NoMc, false),
    ("no-sr", Opt::NoSr, false),
    ("no-structured-replies", Opt::NoSr, false),
    ("old-style", Opt::Oldstyle, false),
    ("oldstyle", Opt::Oldstyle, false),
    ("pid-file", Opt::Pidfile, true),
    ("pidfile", Opt::Pidfile, true),
    ("port", Opt::Port, true),
    ("print-uri", Opt::PrintUri, false),
    ("print-url", Opt::PrintUri, false),
    ("show-uri", Opt::PrintUri, false),
    ("show-url", Opt::PrintUri, false),
    ("read-only", Opt::Readonly, false),
    ("readonly", Opt::Readonly, false),
    ("run", Opt::Run, true),
    ("selinux-label", Opt::SelinuxLabel, true),
    ("short-options", Opt::ShortOptions, false),
    ("single", Opt::Single, false),
    ("stdin", Opt::Single, false),
    ("swap", Opt::Swap, false),
    ("threads", Opt::Threads, true),
    ("timeout", Opt::Timeout, true),
    ("time-out", Opt::Timeout, true),
    ("tls", Opt::Tls, true),
    ("tls-certificates", Opt::TlsCertificates, true),
    ("tls-psk", Opt::TlsPsk, true),
    ("tls-verify-peer", Opt::TlsVerifyPeer, false),
    ("unix", Opt::Unix, true),
    ("user", Opt::User, true),
    ("verbose", Opt::Verbose, false),
    ("version", Opt::Version, false),
    ("vsock", Opt::Vsock, false),
];

/// Short options: letter, meaning, whether it takes a value
/// (nbdkit's `46D:e:fg:i:nop:P:rst:u:U:vV`).
const SHORT_OPTIONS: &[(char, Opt, bool)] = &[
    ('4', Opt::Ipv4, false),
    ('6', Opt::Ipv6, false),
    ('D', Opt::Debug, true),
    ('e', Opt::ExportName, true),
    ('f', Opt::Foreground, false),
    ('g', Opt::Group, true),
    ('i', Opt::IpAddr, true),
    ('n', Opt::Newstyle, false),
    ('o', Opt::Oldstyle, false),
    ('p', Opt::Port, true),
    ('P', Opt::Pidfile, true),
    ('r', Opt::Readonly, false),
    ('s', Opt::Single, false),
    ('t', Opt::Threads, true),
    ('u', Opt::User, true),
    ('U', Opt::Unix, true),
    ('v', Opt::Verbose, false),
    ('V', Opt::Version, false),
];

/// Every long option, one per line (`--long-options`).
pub fn long_options() -> String {
    LONG_OPTIONS
        .iter()
        .map(|(name, _, _)| format!("--{name}\n"))
        .collect()
}

/// Every short option, one per line (`--short-options`).
pub fn short_options() -> String {
    SHORT_OPTIONS
        .iter()
        .map(|(c, _, _)| format!("-{c}\n"))
        .collect()
}

/// Resolve a long option name, allowing unambiguous prefixes as getopt does.
fn lookup_long(name: &str) -> Result<(Opt, bool)> {
    if let Some(&(_, opt, arg)) = LONG_OPTIONS.iter().find(|(n, _, _)| *n == name) {
        return Ok((opt, arg));
    }
    let matches: Vec<_> = LONG_OPTIONS
        .iter()
        .filter(|(n, _, _)| n.starts_with(name))
        .collect();
    match matches.as_slice() {
        [] => Err(Error::config(format!("unrecognized option '--{name}'"))),
        [first, rest @ ..] if rest.iter().all(|m| m.1 == first.1) => Ok((first.1, first.2)),
        _ => Err(Error::config(format!("option '--{name}' is ambiguous"))),
    }
}

fn os_to_string(v: OsString) -> Result<String> {
    v.into_string().map_err(|v| {
        Error::config(format!(
            "argument is not valid UTF-8: {}",
            v.to_string_lossy()
        ))
    })
}

/// Parse the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Options>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::Arg;
    let mut parser = lexopt::Parser::from_args(args);
    let mut o = Options::default();
    loop {
        let arg = parser.next().map_err(|e| Error::config(e.to_string()))?;
        let Some(arg) = arg else { break };
        let (opt, takes_value, spelled) = match arg {
            Arg::Short(c) => match SHORT_OPTIONS.iter().find(|(s, _, _)| *s == c) {
                Some(&(_, opt, arg)) => (opt, arg, format!("-{c}")),
                None => return Err(Error::config(format!("invalid option -- '{c}'"))),
            },
            Arg::Long(name) => {
                let (opt, arg) = lookup_long(name)?;
                (opt, arg, format!("--{name}"))
            }
            Arg::Value(v) => {
                if o.plugin.is_none() {
                    o.plugin = Some(os_to_string(v)?);
                } else {
                    o.params.push(v);
                }
                continue;
            }
        };
        let raw =
            if takes_value {
                Some(parser.value().map_err(|_| {
                    Error::config(format!("option '{spelled}' requires an argument"))
                })?)
            } else {
                None
            };
        // Paths (-U, -P) and the export name may be any bytes, as in C;
        // the rest is text.
        let is_path = matches!(opt, Opt::Unix | Opt::Pidfile | Opt::ExportName);
        let value = match &raw {
            Some(v) if !is_path => Some(os_to_string(v.clone())?),
            _ => None,
        };
        let raw_path = || PathBuf::from(raw.clone().unwrap_or_default());
        let value = || value.clone().unwrap_or_default();
        match opt {
            Opt::Ipv4 => o.family = Family::V4,
            Opt::Ipv6 => o.family = Family::V6,
            Opt::Debug => o.debug_flags.push(value()),
            Opt::DumpConfig => {
                o.immediate = Some(Immediate::DumpConfig);
                return Ok(o);
            }
            Opt::LongOptions => {
                o.immediate = Some(Immediate::LongOptions);
                return Ok(o);
            }
            Opt::ShortOptions => {
                o.immediate = Some(Immediate::ShortOptions);
                return Ok(o);
            }
            Opt::DumpPlugin => o.action = Action::DumpPlugin,
            Opt::Help => o.action = Action::Help,
            Opt::Version => o.action = Action::Version,
            Opt::ExitWithParent => o.exit_with_parent = true,
            Opt::ExportName => {
                let name = raw.clone().unwrap_or_default();
                if name.len() > crate::protocol::consts::NBD_MAX_STRING {
                    return Err(Error::config(format!(
                        "-e: export name is {} bytes long, the NBD protocol allows at most {}",
                        name.len(),
                        crate::protocol::consts::NBD_MAX_STRING
                    )));
                }
                o.exportname = name;
            }
            Opt::Filter => o.filters.push(value()),
            Opt::Foreground => o.foreground = true,
            Opt::Group => o.group = Some(value()),
            Opt::IpAddr => o.ipaddr = Some(value()),
            Opt::Keepalive => o.keepalive = true,
            Opt::Log => o.log = Some(value()),
            Opt::MaskHandshake => {
                let v = crate::parse::parse_unsigned("mask-handshake", &value(), u32::MAX as u64)?;
                // Only the global handshake flags nbdkit knows can be masked.
                if v & !u64::from(HANDSHAKE_FLAGS) != 0 {
                    return Err(Error::config(format!(
                        "--mask-handshake: {v:#x} has bits outside the known handshake flags ({HANDSHAKE_FLAGS:#x})"
                    )));
                }
                o.mask_handshake = Some(v as u32);
            }
            Opt::Newstyle => o.oldstyle = false,
            Opt::Oldstyle => o.oldstyle = true,
            Opt::NoMc => o.no_mc = true,
            Opt::NoSr => o.no_sr = true,
            Opt::Pidfile => o.pidfile = Some(absolute_path(raw_path())?),
            Opt::Port => o.port = Some(value()),
            Opt::PrintUri => o.print_uri = true,
            Opt::Readonly => o.readonly = true,
            Opt::Run => {
                let cmd = value();
                if cmd.trim().is_empty() {
                    return Err(Error::config("--run: the command must not be empty"));
                }
                o.run = Some(cmd);
            }
            Opt::SelinuxLabel => o.selinux_label = Some(value()),
            Opt::Single => o.single = true,
            Opt::Swap => o.swap = true,
            Opt::Threads => {
                let v = crate::parse::parse_unsigned("threads", &value(), i32::MAX as u64)?;
                o.threads = v as usize;
            }
            Opt::Timeout => o.timeout = Some(value()),
            Opt::Tls => o.tls = Some(parse_tls(&value())?),
            Opt::TlsCertificates => o.tls_certificates = Some(value()),
            Opt::TlsPsk => o.tls_psk = Some(value()),
            Opt::TlsVerifyPeer => o.tls_verify_peer = true,
            Opt::Unix => {
                let v = raw_path();
                o.unix = Some(if v.as_os_str() == "-" {
                    UnixSocket::Private
                } else {
                    UnixSocket::Path(absolute_path(v)?)
                });
            }
            Opt::User => o.user = Some(value()),
            Opt::Verbose => o.verbose = true,
            Opt::Vsock => o.vsock = true,
        }
    }
    Ok(o)
}

fn parse_tls(s: &str) -> Result<TlsMode> {
    match s.to_ascii_lowercase().as_str() {
        "require" | "required" | "force" => Ok(TlsMode::Require),
        _ => match crate::parse::parse_bool(s) {
            Ok(true) => Ok(TlsMode::On),
            Ok(false) => Ok(TlsMode::Off),
            Err(_) => Err(Error::config(format!(
                "--tls flag must be off|on|require, not '{s}'"
            ))),
        },
    }
}

/// Make a path absolute against the current directory (without resolving
/// symlinks, as nbdkit does for `-U` and `-P`).
pub fn absolute(p: &str) -> Result<PathBuf> {
    absolute_path(PathBuf::from(p))
}

/// [`absolute`] for a path of any bytes.
pub fn absolute_path(path: PathBuf) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::config("path must not be empty"));
    }
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(e, "getcwd"))?;
    Ok(cwd.join(path))
}

/// nbdkit's usage text (`--help`).
pub const USAGE: &str = "\
nbdkit [-4|--ipv4-only] [-6|--ipv6-only]
       [-D|--debug PLUGIN|FILTER|nbdkit.FLAG=N]
       [--exit-with-parent] [-e|--exportname EXPORTNAME]
       [--filter=FILTER ...] [-f|--foreground]
       [-g|--group GROUP] [-i|--ipaddr IPADDR] [--keepalive]
       [--log=default|stderr|syslog|null|/path]
       [--mask-handshake=MASK] [-n|--newstyle]
       [--no-mc|--no-meta-contexts]
       [--no-sr|--no-structured-replies] [-o|--oldstyle]
       [-P|--pidfile PIDFILE] [-p|--port PORT] [--print-uri]
       [-r|--readonly] [--run 'COMMAND ARGS ...']
       [--selinux-label=LABEL] [-s|--single] [--swap]
       [-t|--threads THREADS] [--timeout=TIMEOUT]
       [--tls=off|on|require]
       [--tls-certificates=/path/to/certificates]
       [--tls-psk=/path/to/pskfile] [--tls-verify-peer]
       [-U|--unix SOCKET|-] [-u|--user USER]
       [-v|--verbose] [--vsock]
       PLUGIN [[KEY=]VALUE [KEY=VALUE [...]]]

nbdkit --dump-config

nbdkit PLUGIN --dump-plugin

nbdkit --help

nbdkit [-V|--version]

Please read the nbdkit(1) manual page for full usage.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options> {
        parse(args.iter().copied())
    }

    #[test]
    fn options_may_follow_the_plugin_and_its_parameters() {
        let o = p(&[
            "memory",
            "1M",
            "-U",
            "-",
            "--filter=exitlast",
            "--run",
            "true",
        ])
        .unwrap();
        assert_eq!(o.plugin.as_deref(), Some("memory"));
        assert_eq!(o.params, vec![OsString::from("1M")]);
        assert_eq!(o.unix, Some(UnixSocket::Private));
        assert_eq!(o.filters, vec!["exitlast"]);
        assert_eq!(o.run.as_deref(), Some("true"));
    }

    #[test]
    fn short_options_bundle() {
        let o = p(&["-fvrU-", "null"]).unwrap();
        assert!(o.foreground && o.verbose && o.readonly);
        assert_eq!(o.unix, Some(UnixSocket::Private));
        let o = p(&["-p10999", "-t", "4", "null"]).unwrap();
        assert_eq!(o.port.as_deref(), Some("10999"));
        assert_eq!(o.threads, 4);
    }

    #[test]
    fn long_options_take_values_both_ways_and_prefixes() {
        let o = p(&["--filter", "a", "--filter=b", "--export-name=x", "null"]).unwrap();
        assert_eq!(o.filters, vec!["a", "b"]);
        assert_eq!(o.exportname, OsString::from("x"));
        let o = p(&["--read", "--exit-with", "null"]).unwrap();
        assert!(o.readonly && o.exit_with_parent);
        assert!(p(&["--no-", "null"])
            .unwrap_err()
            .message()
            .contains("ambiguous"));
    }

    #[test]
    fn double_dash_ends_options() {
        let o = p(&["memory", "--", "-1"]).unwrap();
        assert_eq!(o.params, vec![OsString::from("-1")]);
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(p(&["--nosuchoption", "null"]).is_err());
        assert!(p(&["-Z", "null"]).is_err());
        assert!(p(&["null", "-t"]).is_err());
        assert!(p(&["-t", "abc", "null"]).is_err());
        assert!(p(&["--tls=maybe", "null"]).is_err());
        assert!(p(&["--mask-handshake=abc", "null"]).is_err());
    }

    #[test]
    fn immediate_options_stop_parsing() {
        let o = p(&["--dump-config", "--nosuchoption"]).unwrap();
        assert_eq!(o.immediate, Some(Immediate::DumpConfig));
    }

    #[test]
    fn relative_paths_become_absolute() {
        let o = p(&["-U", "rel.sock", "-P", "x.pid", "null"]).unwrap();
        let Some(UnixSocket::Path(path)) = o.unix else {
            panic!()
        };
        assert!(path.is_absolute() && path.ends_with("rel.sock"));
        assert!(o.pidfile.unwrap().is_absolute());
    }

    #[test]
    fn tls_words() {
        assert_eq!(
            p(&["--tls=require", "null"]).unwrap().tls,
            Some(TlsMode::Require)
        );
        assert_eq!(
            p(&["--tls=force", "null"]).unwrap().tls,
            Some(TlsMode::Require)
        );
        assert_eq!(p(&["--tls=yes", "null"]).unwrap().tls, Some(TlsMode::On));
        assert_eq!(p(&["--tls=off", "null"]).unwrap().tls, Some(TlsMode::Off));
    }
}
