//! TLS with real GnuTLS clients (nbdinfo, nbdcopy, qemu-img) and a raw
//! OpenSSL client for the protocol rules.  Every test makes its own CA,
//! server and client certificates with `certtool` and its PSK file with
//! `psktool`.

use crate::harness::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Credentials made for one test, in a temporary directory:
/// `pki/` (server: ca-cert, server-cert, server-key), `client/` (ca-cert,
/// client-cert, client-key, as libnbd and qemu look for them), `ca-only/`
/// (just the CA: a client without a certificate), `keys.psk` (user alice)
/// and `wrong.psk` (alice with another key).
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

fn certtool(dir: &Path, args: &[&str]) {
    let mut c = client("/usr/bin/certtool");
    c.current_dir(dir).args(args);
    let o = run_cmd(&mut c, LONG_TIMEOUT);
    assert_success(&o, &format!("certtool {args:?}"));
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        write(
            "ca.info",
            "cn = Test CA\norganization = Test\ncountry = US\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 30\n",
        );
        write(
            "server.info",
            "organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n\
             tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
        );
        write(
            "client.info",
            "country = US\norganization = Test\ncn = alice\ntls_www_client\nencryption_key\n\
             signing_key\nexpiration_days = 30\n",
        );
        for key in ["ca-key.pem", "server-key.pem", "client-key.pem"] {
            certtool(d, &["--generate-privkey", "--outfile", key]);
        }
        certtool(
            d,
            &[
                "--generate-self-signed",
                "--load-privkey=ca-key.pem",
                "--template=ca.info",
                "--outfile=ca-cert.pem",
            ],
        );
        for who in ["server", "client"] {
            certtool(
                d,
                &[
                    "--generate-certificate",
                    "--load-ca-certificate=ca-cert.pem",
                    "--load-ca-privkey=ca-key.pem",
                    &format!("--load-privkey={who}-key.pem"),
                    &format!("--template={who}.info"),
                    &format!("--outfile={who}-cert.pem"),
                ],
            );
        }
        let copy = |sub: &str, files: &[&str]| {
            std::fs::create_dir(d.join(sub)).unwrap();
            for f in files {
                std::fs::copy(d.join(f), d.join(sub).join(f)).unwrap();
            }
        };
        copy("pki", &["ca-cert.pem", "server-cert.pem", "server-key.pem"]);
        copy(
            "client",
            &["ca-cert.pem", "client-cert.pem", "client-key.pem"],
        );
        copy("ca-only", &["ca-cert.pem"]);
        let mut c = client("/usr/bin/psktool");
        c.current_dir(d).args(["-u", "alice", "-p", "keys.psk"]);
        assert_success(&run_cmd(&mut c, TIMEOUT), "psktool");
        write(
            "wrong.psk",
            "alice:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        );
        Pki { dir }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A server requiring TLS with `keys.psk`, serving `plugin...`.
    pub(crate) fn psk_server(&self, plugin: &[&str]) -> Server {
        self.server(
            "--tls=require",
            &format!("--tls-psk={}", self.path("keys.psk")),
            plugin,
        )
    }

    /// A server requiring TLS with the `pki/` certificates.
    pub(crate) fn x509_server(&self, extra: &[&str]) -> Server {
        self.x509_server_with("--tls=require", extra)
    }

    /// A server with the `pki/` certificates and TLS `mode`.
    fn x509_server_with(&self, mode: &str, extra: &[&str]) -> Server {
        let certs = format!("--tls-certificates={}", self.path("pki"));
        self.server(mode, &certs, extra)
    }

    fn server(&self, mode: &str, credentials: &str, extra: &[&str]) -> Server {
        let mut args = vec![mode, credentials];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// Send NBD_OPT_STARTTLS on a raw connection and run the TLS handshake
    /// as a client trusting our CA.
    fn starttls(&self, mut plain: UnixStream) -> openssl::ssl::SslStream<UnixStream> {
        send_opt(&mut plain, OPT_STARTTLS, b"");
        assert_eq!(opt_reply(&mut plain).1, REP_ACK);
        let mut b =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
        b.set_ca_file(self.dir.path().join("ca-cert.pem")).unwrap();
        b.build()
            .connect("localhost", plain)
            .expect("TLS handshake")
    }

    /// The URI by which alice reaches `s` with `keyfile` (`keys.psk`, ...).
    fn psk_uri(&self, s: &Server, keyfile: &str) -> String {
        nbds_unix(
            "alice@",
            &s.sock,
            &format!("tls-psk-file={}", self.path(keyfile)),
        )
    }

    /// The URI by which a client with certificate directory `sub` reaches `s`.
    fn x509_uri(&self, s: &Server, sub: &str) -> String {
        nbds_unix("", &s.sock, &format!("tls-certificates={}", self.path(sub)))
    }
}

/// `nbds+unix` URI for a server on `sock` with extra query parameters.
fn nbds_unix(user: &str, sock: &Path, query: &str) -> String {
    format!("nbds+unix://{user}/?socket={}&{query}", sock.display())
}

#[track_caller]
fn assert_tls_info(out: &str) {
    assert!(out.contains("newstyle-fixed with TLS"), "{out}");
}

#[test]
fn x509_nbdinfo_over_unix() {
    let pki = Pki::new();
    let s = pki.x509_server(&["memory", "1M"]);
    let out = nbdinfo(&[pki.x509_uri(&s, "client")]);
    assert_tls_info(&out);
    assert!(out.contains("export-size: 1048576"), "{out}");
}

#[test]
fn psk_nbdinfo_and_a_wrong_key_is_refused() {
    let pki = Pki::new();
    let mut s = pki.psk_server(&["memory", "1M"]);
    let good = pki.psk_uri(&s, "keys.psk");
    assert_tls_info(&nbdinfo(&[&good]));

    let wrong = pki.psk_uri(&s, "wrong.psk");
    let o = client_any("/usr/bin/nbdinfo", &[&wrong]);
    assert!(!o.status.success(), "a wrong key must be refused");
    // An unknown user is refused too.
    let mut other = std::fs::read_to_string(pki.path("keys.psk")).unwrap();
    other = other.replacen("alice:", "bob:", 1);
    std::fs::write(pki.path("bob.psk"), other).unwrap();
    let bob = nbds_unix(
        "bob@",
        &s.sock,
        &format!("tls-psk-file={}", pki.path("bob.psk")),
    );
    assert!(!client_any("/usr/bin/nbdinfo", &[&bob]).status.success());

    // The server carries on.
    assert_tls_info(&nbdinfo(&[&good]));
    assert!(s.is_running());
    assert_no_panic_text(&s.stderr());
    s.stop_ok();
}

fn assert_no_panic_text(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn plaintext_refused_under_require() {
    let pki = Pki::new();
    let s = pki.psk_server(&["memory", "1M"]);
    let o = client_any("/usr/bin/nbdinfo", &[s.uri()]);
    assert!(!o.status.success(), "plaintext must be refused");
    // Not even the list of exports is given away.
    let o = client_any("/usr/bin/nbdinfo", &["--list".to_string(), s.uri()]);
    assert!(!o.status.success(), "listing must be refused");
}

#[test]
fn tls_on_serves_plaintext_and_tls() {
    let pki = Pki::new();
    let s = pki.server(
        "--tls=on",
        &format!("--tls-psk={}", pki.path("keys.psk")),
        &["memory", "1M"],
    );
    let plain = nbdinfo(&[s.uri()]);
    assert!(plain.contains("newstyle-fixed without TLS"), "{plain}");
    let secure = nbdinfo(&[pki.psk_uri(&s, "keys.psk")]);
    assert_tls_info(&secure);
}

#[test]
fn verify_peer_admits_a_client_certificate_and_refuses_none() {
    let pki = Pki::new();
    let mut s = Server::start(&[
        "-v",
        "--tls=require",
        &format!("--tls-certificates={}", pki.path("pki")),
        "--tls-verify-peer",
        "memory",
        "1M",
    ]);
    let with = pki.x509_uri(&s, "client");
    assert_tls_info(&nbdinfo(&[&with]));
    // The client's subject and issuer were recorded, most specific first.
    let log = s.stderr();
    assert!(
        log.contains("client certificate CN=alice,O=Test,C=US"),
        "{log}"
    );

    let without = pki.x509_uri(&s, "ca-only");
    let o = client_any("/usr/bin/nbdinfo", &[&without]);
    assert!(
        !o.status.success(),
        "a client without a certificate must be refused"
    );
    assert!(s.is_running());
    s.stop_ok();
}

/// `qemu-img info --object OBJECT --image-opts OPTS`.
fn qemu_info(object: String, opts: String) -> String {
    qemu_img(&[
        "info".to_string(),
        "--object".into(),
        object,
        "--image-opts".into(),
        opts,
    ])
}

#[test]
fn qemu_img_x509_over_tcp() {
    let pki = Pki::new();
    let s = Server::start_tcp(&[
        "--tls=require",
        &format!("--tls-certificates={}", pki.path("pki")),
        "--tls-verify-peer",
        "memory",
        "10M",
    ]);
    let out = qemu_info(
        format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            pki.path("client")
        ),
        format!(
            "driver=nbd,host=127.0.0.1,port={},tls-creds=tls0",
            s.port.unwrap()
        ),
    );
    assert!(out.contains("virtual size: 10 MiB"), "{out}");
}

#[test]
fn qemu_img_psk_over_unix() {
    let pki = Pki::new();
    let s = pki.psk_server(&["memory", "10M"]);
    // qemu reads keys.psk from the directory it is given.
    let out = qemu_info(
        format!(
            "tls-creds-psk,id=tls0,endpoint=client,username=alice,dir={}",
            pki.dir.path().display()
        ),
        format!(
            "driver=nbd,server.type=unix,server.path={},tls-creds=tls0",
            s.sock.display()
        ),
    );
    assert!(out.contains("virtual size: 10 MiB"), "{out}");
}

#[test]
fn nbdcopy_40m_random_round_trip() {
    let pki = Pki::new();
    let s = pki.psk_server(&["memory", "40M"]);
    let data = pseudo_random(40 << 20, 6);
    let src = write_file(pki.dir.path(), "src.img", &data);
    let dst = pki.dir.path().join("dst.img");
    let uri = pki.psk_uri(&s, "keys.psk");
    nbdcopy(&[src.display().to_string(), uri.clone()]);
    nbdcopy(&[uri, dst.display().to_string()]);
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "data read back through TLS differs");
}

#[test]
fn captive_tls_variables_and_uri() {
    let pki = Pki::new();
    // Relative paths are passed through verbatim.
    let run = |args: &[&str], script: &str| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--run", script]);
        let mut c = nbdkit();
        c.current_dir(pki.dir.path())
            .args(&full)
            .env("PATH", client_path());
        let o = run_cmd(&mut c, LONG_TIMEOUT);
        assert_success(&o, &format!("{full:?}"));
        (stdout_str(&o), stderr_str(&o))
    };
    let (out, err) = run(
        &[
            "--tls=require",
            "--tls-certificates=pki",
            "-D",
            "nbdkit.tls.session=1",
            "null",
        ],
        "echo \"tls=$tls certs=$tls_certificates psk=$tls_psk\"; echo \"uri=$uri\"; \
         [ \"x$tls\" = x2 ] && nbdinfo \"$uri\"",
    );
    assert!(out.contains("tls=2 certs=pki psk=\n"), "{out}");
    assert!(out.contains("uri=nbds+unix://?socket=/"), "{out}");
    assert!(out.contains("&tls-certificates=pki\n"), "{out}");
    assert_tls_info(&out);
    assert!(!err.contains("warning"), "{err}");

    let (out, _) = run(
        &["--tls=require", "--tls-psk=keys.psk", "null"],
        "echo \"tls=$tls psk=$tls_psk uri=$uri\"",
    );
    assert!(out.contains("tls=2 psk=keys.psk uri=nbds+unix://"), "{out}");
    assert!(out.contains("&tls-psk-file=keys.psk"), "{out}");

    let (out, _) = run(
        &["--tls=on", "--tls-psk=keys.psk", "null"],
        "echo \"tls=$tls uri=$uri\"",
    );
    assert!(out.contains("tls=1 uri=nbd+unix://?socket="), "{out}");

    let (out, _) = run(&["--tls=off", "null"], "echo \"tls=${tls-unset}\"");
    assert!(out.contains("tls=unset"), "{out}");
}

#[test]
fn missing_credentials() {
    let pki = Pki::new();
    // Required: a startup error, never a plaintext server.
    let o = run(&["--tls=require", "--tls-certificates=/nonexistent", "null"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(stderr_str(&o).contains("could not load TLS certificates"));
    let o = run(&["--tls=require", "--tls-psk=/nonexistent.psk", "null"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(
        stderr_str(&o).contains("nbdkit: error: "),
        "{}",
        stderr_str(&o)
    );
    // A directory missing the key does not count as one.
    let partial = pki.dir.path().join("partial");
    std::fs::create_dir(&partial).unwrap();
    for f in ["ca-cert.pem", "server-cert.pem"] {
        std::fs::copy(pki.dir.path().join(f), partial.join(f)).unwrap();
    }
    let o = run(&[
        "--tls=require".to_string(),
        format!("--tls-certificates={}", partial.display()),
        "null".into(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    // --tls=on without credentials: a warning, then TLS off.
    let o = run_cmd(
        nbdkit()
            .args([
                "--tls=on",
                "--tls-certificates=/nonexistent",
                "null",
                "--run",
                "echo tls=${tls-unset}",
            ])
            .env("PATH", client_path()),
        TIMEOUT,
    );
    assert_success(&o, "--tls=on without credentials");
    assert!(stdout_str(&o).contains("tls=unset"));
    assert!(stderr_str(&o).contains("warning: --tls=on but could not load"));
    // Oldstyle cannot do TLS.
    let o = run(&[
        "-o".to_string(),
        "--tls=require".into(),
        format!("--tls-psk={}", pki.path("keys.psk")),
        "null".into(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr_str(&o).contains("nbdkit: error: cannot use oldstyle protocol (-o) and require TLS"),
        "{}",
        stderr_str(&o)
    );
}

#[test]
fn dump_config_says_tls_yes() {
    let out = run_ok(&["--dump-config"]);
    assert!(out.lines().any(|l| l == "tls=yes"), "{out}");
}

// ---------------------------------------------------------------------------
// The protocol rules, with a raw client (OpenSSL for the TLS part).

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_TLS_REQD: u32 = 0x8000_0005;

fn send_opt(s: &mut impl Write, opt: u32, data: &[u8]) {
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).unwrap();
    s.flush().unwrap();
}

fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// One option reply: (option, type, payload).
fn opt_reply(s: &mut impl Read) -> (u32, u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        OPT_REPLY_MAGIC
    );
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    (opt, t, read_n(s, len))
}

/// Send GO for the default export, return the final reply type.
fn go(s: &mut (impl Read + Write)) -> u32 {
    send_opt(s, OPT_GO, &[0, 0, 0, 0, 0, 0]);
    loop {
        let (o, t, _) = opt_reply(s);
        assert_eq!(o, OPT_GO);
        if t != REP_INFO {
            return t;
        }
    }
}

#[test]
fn starttls_protocol_rules() {
    let pki = Pki::new();
    let s = pki.x509_server(&["memory", "1M"]);
    let mut plain = UnixStream::connect(&s.sock).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    let greeting = read_n(&mut plain, 18);
    assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
    plain.write_all(&3u32.to_be_bytes()).unwrap();

    // Before TLS: everything but STARTTLS and ABORT needs TLS.
    for opt in [OPT_LIST, OPT_STRUCTURED_REPLY] {
        send_opt(&mut plain, opt, b"");
        let (o, t, _) = opt_reply(&mut plain);
        assert_eq!((o, t), (opt, REP_ERR_TLS_REQD));
    }
    assert_eq!(go(&mut plain), REP_ERR_TLS_REQD);
    let mut tls = pki.starttls(plain);

    // A second STARTTLS is invalid; options work now.
    send_opt(&mut tls, OPT_STARTTLS, b"");
    assert_eq!(opt_reply(&mut tls).1, REP_ERR_INVALID);
    send_opt(&mut tls, OPT_LIST, b"");
    assert_eq!(opt_reply(&mut tls).1, REP_SERVER);
    assert_eq!(opt_reply(&mut tls).1, REP_ACK);
    send_opt(&mut tls, OPT_STRUCTURED_REPLY, b"");
    assert_eq!(opt_reply(&mut tls).1, REP_ACK);
    assert_eq!(go(&mut tls), REP_ACK);

    // Transmission: write then read back 1 MiB in one request each.
    let data = pseudo_random(1 << 20, 9);
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes()); // flags
    req.extend_from_slice(&1u16.to_be_bytes()); // WRITE
    req.extend_from_slice(&7u64.to_be_bytes()); // cookie
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&(data.len() as u32).to_be_bytes());
    tls.write_all(&req).unwrap();
    tls.write_all(&data).unwrap();
    let r = read_n(&mut tls, 16);
    assert_eq!(&r[4..8], &[0, 0, 0, 0], "write failed");
    req[6..8].copy_from_slice(&0u16.to_be_bytes()); // READ
    tls.write_all(&req).unwrap();
    // Structured reply: a data chunk (header 20 bytes + offset 8) then done.
    let mut got = Vec::new();
    loop {
        let h = read_n(&mut tls, 20);
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let kind = u16::from_be_bytes([h[6], h[7]]);
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let payload = read_n(&mut tls, len);
        if kind == 1 {
            got.extend_from_slice(&payload[8..]);
        } else {
            assert_eq!(kind, 0, "unexpected chunk type {kind}");
        }
        if flags & 1 != 0 {
            break;
        }
    }
    assert!(got == data, "read back differs");
}

#[test]
fn plaintext_pipelined_after_starttls_is_not_trusted() {
    // Bytes sent after STARTTLS but before the handshake must never be
    // taken as protected data: the server hangs up instead.
    let pki = Pki::new();
    let mut s = pki.x509_server(&["memory", "1M"]);
    let mut plain = UnixStream::connect(&s.sock).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    read_n(&mut plain, 18);
    let mut b = 3u32.to_be_bytes().to_vec();
    for opt in [OPT_STARTTLS, OPT_LIST] {
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
    }
    plain.write_all(&b).unwrap();
    assert_eq!(opt_reply(&mut plain).1, REP_ACK);
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(rest.is_empty(), "server answered injected plaintext");
    assert!(s.is_running());
    s.stop_ok();
}

#[test]
fn tls_1_2_with_gnutls_clients() {
    // GnuTLS clients prefer TLS 1.3; a system priority override makes
    // libnbd offer no more than TLS 1.2.
    let pki = Pki::new();
    let prio = pki.dir.path().join("prio.conf");
    std::fs::write(&prio, "[overrides]\ndisabled-version = tls1.3\n").unwrap();
    for creds in [
        format!("--tls-psk={}", pki.path("keys.psk")),
        format!("--tls-certificates={}", pki.path("pki")),
    ] {
        let s = Server::start(&["-v", "--tls=require", &creds, "memory", "1M"]);
        let query = if creds.contains("psk") {
            format!("tls-psk-file={}", pki.path("keys.psk"))
        } else {
            format!("tls-certificates={}", pki.path("client"))
        };
        let mut c = client("/usr/bin/nbdinfo");
        c.env("GNUTLS_SYSTEM_PRIORITY_FILE", &prio)
            .arg(nbds_unix("alice@", &s.sock, &query));
        let o = run_cmd(&mut c, LONG_TIMEOUT);
        assert_success(&o, "nbdinfo with TLS 1.2");
        assert_tls_info(&stdout_str(&o));
        let log = s.stderr();
        assert!(log.contains("TLS handshake completed: TLSv1.2"), "{log}");
    }
}

#[test]
fn stopping_with_an_idle_tls_client_connected() {
    let pki = Pki::new();
    let mut s = pki.psk_server(&["memory", "1M"]);
    let uri = pki.psk_uri(&s, "keys.psk");
    let ready = pki.dir.path().join("connected");
    let script = "import nbd, sys, time\nh = nbd.NBD()\nh.set_uri_allow_local_file(True)\n\
                  h.connect_uri(sys.argv[1])\nopen(sys.argv[2], 'w').close()\ntime.sleep(60)\n";
    let mut c = client("/usr/bin/python3");
    c.args(["-c", script, &uri, &ready.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < TIMEOUT, "client did not connect");
        assert!(child.try_wait().unwrap().is_none(), "client failed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s.stop_ok();
    kill_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

#[test]
fn many_parallel_requests_on_one_tls_connection() {
    // Hundreds of writes and reads of mixed sizes in flight at once on one
    // connection: replies come back out of order through one TLS stream.
    let pki = Pki::new();
    let s = pki.psk_server(&["memory", "64M"]);
    let uri = pki.psk_uri(&s, "keys.psk");
    let script = r#"
import nbd, sys, os, random
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
random.seed(7)
size = h.get_size()
chunks = []
off = 0
while off < size:
    n = min(random.choice([512, 4096, 65536, 1 << 20, 3 << 20]), size - off)
    chunks.append((off, n))
    off += n
random.shuffle(chunks)
errors = []
def done(err):
    if err.value != 0:
        errors.append(err.value)
    return 1
data = {o: os.urandom(n) for o, n in chunks}
for o, n in chunks:
    h.aio_pwrite(data[o], o, completion=done)
while h.aio_in_flight() > 0:
    h.poll(-1)
bufs = {o: nbd.Buffer(n) for o, n in chunks}
for o, n in chunks:
    h.aio_pread(bufs[o], o, completion=done)
while h.aio_in_flight() > 0:
    h.poll(-1)
assert not errors, errors
for o, n in chunks:
    assert bufs[o].to_bytearray() == data[o], o
print("ok", len(chunks))
"#;
    let o = client_ok("/usr/bin/python3", &["-c", script, &uri]);
    assert!(stdout_str(&o).starts_with("ok "), "{}", stdout_str(&o));
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let d = pki.dir.path();
    std::fs::write(d.join("crl.info"), "crl_next_update = 30\ncrl_number = 1\n").unwrap();
    certtool(
        d,
        &[
            "--generate-crl",
            "--load-ca-privkey=ca-key.pem",
            "--load-ca-certificate=ca-cert.pem",
            "--load-certificate=client-cert.pem",
            "--template=crl.info",
            "--outfile=pki/ca-crl.pem",
        ],
    );
    let mut s = pki.x509_server(&["--tls-verify-peer", "memory", "1M"]);
    let o = client_any("/usr/bin/nbdinfo", &[pki.x509_uri(&s, "client")]);
    assert!(!o.status.success(), "a revoked certificate must be refused");
    let log = s.stderr();
    assert!(log.contains("revoked"), "{log}");
    s.stop_ok();
}

/// The ip filter's `dn:` and `issuer-dn:` rules match the verified client
/// certificate: alice (issued by Test CA) gets in; a client whose
/// certificate does not match is refused after the handshake.
#[test]
fn ip_filter_dn_rules_match_the_client_certificate() {
    let pki = Pki::new();
    let certs = format!("--tls-certificates={}", pki.path("pki"));
    for (rule, admitted) in [
        ("dn:CN=alice,*", true),
        ("issuer-dn:CN=Test CA,O=Test,C=US", true),
        ("dn:CN=bob,*", false),
    ] {
        let allow = format!("allow={rule}");
        let mut s = Server::start(&[
            "--tls=require",
            &certs,
            "--tls-verify-peer",
            "--filter=ip",
            "memory",
            "1M",
            &allow,
            "deny=all",
        ]);
        let o = client_any("/usr/bin/nbdinfo", &[&pki.x509_uri(&s, "client")]);
        assert_eq!(
            o.status.success(),
            admitted,
            "{rule}: {}\n{}",
            stderr_str(&o),
            s.stderr()
        );
        if admitted {
            assert_tls_info(&stdout_str(&o));
        }
        assert!(s.is_running());
        s.stop_ok();
    }
}

/// `-s` speaks TLS when stdin and stdout are one socket, as with libnbd's
/// connect_command (and inetd, socat).
#[test]
fn single_mode_with_tls_psk() {
    let pki = Pki::new();
    let b = binary().display().to_string();
    let psk = format!("--tls-psk={}", pki.path("keys.psk"));
    let script = "import nbd, sys\n\
                  h = nbd.NBD()\n\
                  h.set_tls(nbd.TLS_REQUIRE)\n\
                  h.set_tls_username('alice')\n\
                  h.set_tls_psk_file(sys.argv[3])\n\
                  h.connect_command([sys.argv[1], '-s', '--tls=require', sys.argv[2], 'memory', '1M'])\n\
                  h.pwrite(b'secret', 4096)\n\
                  print(h.get_tls_negotiated(), h.get_size(), bytes(h.pread(6, 4096)))\n\
                  h.shutdown()";
    let out = client_ok(
        "/usr/bin/python3",
        &["-c", script, &b, &psk, &pki.path("keys.psk")],
    );
    assert_eq!(stdout_str(&out).trim(), "True 1048576 b'secret'");
}

/// Without `--tls`, TLS is on (not required) when credentials load, and off
/// when none are found, which only a debug message mentions.
#[test]
fn tls_default_is_on_with_credentials_else_off() {
    let pki = Pki::new();
    let psk = format!("--tls-psk={}", pki.path("keys.psk"));
    let s = Server::start(&[&psk, "memory", "1M"]);
    let plain = nbdinfo(&[s.uri()]);
    assert!(plain.contains("newstyle-fixed without TLS"), "{plain}");
    assert_tls_info(&nbdinfo(&[pki.psk_uri(&s, "keys.psk")]));
    let out = captive(&[&psk, "null"], "echo \"tls=$tls uri=$uri\"");
    assert!(out.contains("tls=1 uri=nbd+unix://"), "{out}");

    // No credentials anywhere (as root the only default is /etc/pki/nbdkit).
    assert!(
        !Path::new(tls_root_dir()).exists(),
        "this test needs a machine without {}",
        tls_root_dir()
    );
    let mut s = Server::start(&["-v", "memory", "1M"]);
    let plain = nbdinfo(&[s.uri()]);
    assert!(plain.contains("newstyle-fixed without TLS"), "{plain}");
    let o = client_any(
        "/usr/bin/nbdinfo",
        &[nbds_unix(
            "alice@",
            &s.sock,
            &format!("tls-psk-file={}", pki.path("keys.psk")),
        )],
    );
    assert!(!o.status.success(), "TLS must be refused");
    s.stop_ok();
    let log = s.stderr();
    assert!(
        log.contains("nbdkit: debug: TLS disabled: could not load TLS certificates"),
        "{log}"
    );
    assert!(!log.contains("warning"), "{log}");
}

/// nbdkit's certificate directory for root (`--dump-config`'s
/// `root_tls_certificates_dir`).
fn tls_root_dir() -> &'static str {
    "/etc/pki/nbdkit"
}

/// Copy the files of directory `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Let other users read everything under `dir` (a server running as nobody
/// reads the credentials there).
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if dir.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            open_to_all(&e.unwrap().path());
        }
    }
}

/// A captive `--tls=require` server with no `--tls-certificates` whose
/// command connects with the client certificates in `client_dir`.
fn require_with_default_certificates(client_dir: &Path) -> Vec<String> {
    vec![
        "--tls=require".into(),
        "-U".into(),
        "-".into(),
        "null".into(),
        "--run".into(),
        format!("nbdinfo \"$uri&tls-certificates={}\"", client_dir.display()),
    ]
}

/// Without `--tls-certificates`, a user other than root finds certificates
/// in `$HOME/.pki/nbdkit` or `$HOME/.config/pki/nbdkit`.
#[test]
fn default_certificate_directories_for_a_user() {
    let pki = Pki::new();
    let as_nobody = |home: &Path, args: &[String]| {
        let mut c = nbdkit();
        std::os::unix::process::CommandExt::uid(&mut c, 65534);
        std::os::unix::process::CommandExt::gid(&mut c, 65534);
        c.env("HOME", home).env("PATH", client_path()).args(args);
        run_cmd(&mut c, LONG_TIMEOUT)
    };
    for sub in [".pki/nbdkit", ".config/pki/nbdkit"] {
        let home = tempfile::tempdir().unwrap();
        copy_dir(&pki.dir.path().join("pki"), &home.path().join(sub));
        let client_dir = home.path().join("client");
        copy_dir(&pki.dir.path().join("client"), &client_dir);
        open_to_all(home.path());
        let o = as_nobody(home.path(), &require_with_default_certificates(&client_dir));
        assert_success(&o, sub);
        assert_tls_info(&stdout_str(&o));
    }
    // Nothing in $HOME: --tls=require is a startup error.
    let home = tempfile::tempdir().unwrap();
    open_to_all(home.path());
    let args: Vec<String> = ["--tls=require", "-U", "-", "null", "--run", "true"]
        .map(String::from)
        .into();
    let o = as_nobody(home.path(), &args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(
        stderr_str(&o).contains("could not load TLS certificates"),
        "{}",
        stderr_str(&o)
    );
}

/// Run `argv` where /etc/pki/nbdkit holds the files of `certs`: a private
/// mount namespace with an overlay on /etc (the machine's /etc is
/// untouched).
fn with_etc_pki_nbdkit(certs: &Path, argv: &[String]) -> std::process::Output {
    let scratch = tempfile::tempdir().unwrap();
    let script = r#"set -e
t=$1; certs=$2; shift 2
mount -t tmpfs tmpfs "$t"
mkdir -p "$t/upper/pki" "$t/work"
cp -r "$certs" "$t/upper/pki/nbdkit"
chmod -R a+rX "$t/upper/pki"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$t/upper,workdir=$t/work" /etc
exec "$@""#;
    let mut c = client("/usr/bin/unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        script,
    ])
    .arg("sh")
    .arg(scratch.path())
    .arg(certs)
    .args(argv);
    run_cmd(&mut c, LONG_TIMEOUT)
}

/// Without `--tls-certificates`, root uses /etc/pki/nbdkit, and TLS is then
/// on by default; other users never look there.
#[test]
fn default_certificate_directory_for_root() {
    let pki = Pki::new();
    let bin = binary().display().to_string();
    let client_dir = pki.dir.path().join("client");
    let mut argv = vec![bin.clone()];
    argv.extend(require_with_default_certificates(&client_dir));
    let o = with_etc_pki_nbdkit(&pki.dir.path().join("pki"), &argv);
    assert_success(&o, "root with /etc/pki/nbdkit");
    assert_tls_info(&stdout_str(&o));

    let argv: Vec<String> = vec![
        bin.clone(),
        "-U".into(),
        "-".into(),
        "null".into(),
        "--run".into(),
        "echo tls=${tls-unset}".into(),
    ];
    let o = with_etc_pki_nbdkit(&pki.dir.path().join("pki"), &argv);
    assert_success(&o, "TLS on by default");
    assert_eq!(stdout_str(&o).trim(), "tls=1");

    let empty = tempfile::tempdir().unwrap();
    open_to_all(empty.path());
    let mut argv: Vec<String> = [
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/env",
    ]
    .map(String::from)
    .into();
    argv.push(format!("HOME={}", empty.path().display()));
    argv.push(bin);
    argv.extend(["--tls=require", "-U", "-", "null", "--run", "true"].map(String::from));
    let o = with_etc_pki_nbdkit(&pki.dir.path().join("pki"), &argv);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_str(&o));
    assert!(
        stderr_str(&o).contains("could not load TLS certificates"),
        "{}",
        stderr_str(&o)
    );
}

const OPT_SET_META_CONTEXT: u32 = 10;
const REP_META_CONTEXT: u32 = 4;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Everything negotiated in plaintext is forgotten after STARTTLS
/// (`--tls=on`): structured replies and the base:allocation context asked
/// for before TLS do not apply to the encrypted session.
#[test]
fn starttls_forgets_what_was_negotiated_in_plaintext() {
    let pki = Pki::new();
    let s = pki.x509_server_with("--tls=on", &["memory", "1M"]);
    let mut plain = UnixStream::connect(&s.sock).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    read_n(&mut plain, 18);
    plain.write_all(&3u32.to_be_bytes()).unwrap();
    send_opt(&mut plain, OPT_STRUCTURED_REPLY, b"");
    assert_eq!(opt_reply(&mut plain).1, REP_ACK);
    let mut q = Vec::new();
    q.extend_from_slice(&0u32.to_be_bytes()); // export ""
    q.extend_from_slice(&1u32.to_be_bytes()); // one query
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    send_opt(&mut plain, OPT_SET_META_CONTEXT, &q);
    assert_eq!(opt_reply(&mut plain).1, REP_META_CONTEXT);
    assert_eq!(opt_reply(&mut plain).1, REP_ACK);
    let mut tls = pki.starttls(plain);
    assert_eq!(go(&mut tls), REP_ACK);

    let request = |tls: &mut openssl::ssl::SslStream<UnixStream>, cmd: u16, cookie: u64| {
        let mut req = Vec::new();
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&cookie.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&512u32.to_be_bytes());
        tls.write_all(&req).unwrap();
        // Simple reply: magic, error, cookie.
        let r = read_n(tls, 16);
        let magic = u32::from_be_bytes(r[..4].try_into().unwrap());
        let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
        assert_eq!(
            magic, SIMPLE_REPLY_MAGIC,
            "command {cmd}: not a simple reply"
        );
        assert_eq!(&r[8..], &cookie.to_be_bytes());
        error
    };
    // NBD_CMD_READ: a simple reply with the data.
    assert_eq!(request(&mut tls, 0, 1), 0);
    assert_eq!(read_n(&mut tls, 512), vec![0u8; 512]);
    // NBD_CMD_BLOCK_STATUS: no longer negotiated, so EINVAL.
    assert_eq!(request(&mut tls, 7, 2), 22);
}
