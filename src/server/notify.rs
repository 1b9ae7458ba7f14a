//! sd_notify(3): tell a service manager that the server is ready, and later
//! that it is stopping, so `Type=notify` systemd units work.
//!
//! When `NOTIFY_SOCKET` names a Unix datagram socket (a path, or `@name` for
//! the abstract namespace) we send `READY=1` with `MAINPID` (the serving
//! process, which is not the one systemd started when nbdkit goes into the
//! background) once the pidfile is written, and `STOPPING=1` when a clean
//! shutdown begins.  Without `NOTIFY_SOCKET` nothing happens.  Failing to
//! notify is not fatal: it is reported and the server carries on.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Report readiness, naming `main_pid` as the service's main process.
pub fn ready(main_pid: u32) {
    send(&format!("READY=1\nMAINPID={main_pid}\n"));
}

/// Report that the server is shutting down.
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(msg: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let result = address(&target).and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(msg.as_bytes(), &addr)
    });
    match result {
        Ok(_) => crate::log::debug(format!(
            "sd_notify: sent {} to {target}",
            msg.trim_end().replace('\n', " ")
        )),
        Err(e) => crate::log::warning(format!("sd_notify: NOTIFY_SOCKET={target}: {e}")),
    }
}

fn address(target: &str) -> std::io::Result<SocketAddr> {
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if target.starts_with('/') => SocketAddr::from_pathname(target),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path or @abstract name",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(address("/run/systemd/notify").is_ok());
        assert!(address("@abstract").is_ok());
        assert!(address("relative").is_err());
    }
}
