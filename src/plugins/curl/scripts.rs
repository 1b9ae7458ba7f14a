//! `header-script` and `cookie-script`: run a shell fragment to produce the
//! headers (one a line) or the cookie (first line) sent with every request,
//! and run it again once `*-script-renew` seconds have passed since it last
//! ran.  The script sees `$iteration` (0 the first time) and `$url`.
//!
//! What the requests send is versioned: every rerun bumps a generation
//! number, and a pooled handle whose generation is older re-applies the
//! headers and cookie before its next request.

use super::Settings;
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The headers and cookie requests currently send.
#[derive(Debug, Default)]
pub struct Extra {
    pub generation: u64,
    pub headers: Vec<String>,
    pub cookie: Option<String>,
}

struct Script {
    text: String,
    renew: Option<Duration>,
    iteration: u64,
    last: Option<Instant>,
}

impl Script {
    fn due(&self, now: Instant) -> bool {
        match (self.last, self.renew) {
            (None, _) => true,
            (Some(t), Some(r)) => now.duration_since(t) >= r,
            (Some(_), None) => false,
        }
    }

    fn run(&mut self, what: &str, url: &str) -> Result<String> {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.text)
            .env("iteration", self.iteration.to_string())
            .env("url", url)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Error::new(Errno::EIO, format!("{what}: cannot run /bin/sh: {e}")))?;
        self.iteration += 1;
        self.last = Some(Instant::now());
        if !out.status.success() {
            return Err(Error::new(
                Errno::EIO,
                format!("{what}: script failed ({})", out.status),
            ));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| Error::new(Errno::EIO, format!("{what}: output is not UTF-8")))
    }
}

/// The static headers/cookie, or the scripts producing them.
pub struct Scripts {
    url: String,
    any: bool,
    debug: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    header: Option<Script>,
    cookie: Option<Script>,
    current: Arc<Extra>,
}

fn script(text: &Option<String>, renew: u64) -> Option<Script> {
    text.as_ref().map(|t| Script {
        text: t.clone(),
        renew: (renew > 0).then(|| Duration::from_secs(renew)),
        iteration: 0,
        last: None,
    })
}

impl Scripts {
    pub fn new(s: &Settings) -> Self {
        Scripts {
            url: s.url.clone(),
            any: s.header_script.is_some() || s.cookie_script.is_some(),
            debug: s.debug_scripts,
            inner: Mutex::new(Inner {
                header: script(&s.header_script, s.header_script_renew),
                cookie: script(&s.cookie_script, s.cookie_script_renew),
                current: Arc::new(Extra {
                    generation: 0,
                    headers: s.headers.clone(),
                    cookie: s.cookie.clone(),
                }),
            }),
        }
    }

    /// What requests should send now, running a script first if it is due.
    /// Scripts run under the lock: concurrent requests wait for the one
    /// run and then all use its result.
    pub fn current(&self) -> Result<Arc<Extra>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !self.any {
            return Ok(g.current.clone());
        }
        let now = Instant::now();
        let inner = &mut *g;
        let mut headers = None;
        let mut cookie = None;
        if let Some(h) = inner.header.as_mut().filter(|h| h.due(now)) {
            let out = h.run("header-script", &self.url)?;
            let list: Vec<String> = out
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            crate::log::debug(format!(
                "curl: header-script printed {} headers",
                list.len()
            ));
            if self.debug {
                for h in &list {
                    crate::log::debug(format!("curl: header-script: {h}"));
                }
            }
            headers = Some(list);
        }
        if let Some(c) = inner.cookie.as_mut().filter(|c| c.due(now)) {
            let out = c.run("cookie-script", &self.url)?;
            let first = out
                .lines()
                .next()
                .map(|l| l.trim_end_matches('\r').to_string());
            if self.debug {
                crate::log::debug(format!(
                    "curl: cookie-script: {}",
                    first.as_deref().unwrap_or("")
                ));
            }
            cookie = Some(first);
        }
        if headers.is_some() || cookie.is_some() {
            let old = &inner.current;
            inner.current = Arc::new(Extra {
                generation: old.generation + 1,
                headers: headers.unwrap_or_else(|| old.headers.clone()),
                cookie: cookie.unwrap_or_else(|| old.cookie.clone()),
            });
        }
        Ok(inner.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_script_runs_once_without_renew() {
        let s = Settings {
            url: "http://h/x".into(),
            header_script: Some("echo \"X-Iter: $iteration\"; echo; echo \"X-Url: $url\"".into()),
            cookie_script: Some("echo \"a=$iteration\"; echo ignored".into()),
            ..Default::default()
        };
        let sc = Scripts::new(&s);
        let e = sc.current().unwrap();
        assert_eq!(e.headers, vec!["X-Iter: 0", "X-Url: http://h/x"]);
        assert_eq!(e.cookie.as_deref(), Some("a=0"));
        assert_eq!(e.generation, 1);
        let e2 = sc.current().unwrap();
        assert_eq!(e2.generation, 1);
        assert_eq!(e2.headers[0], "X-Iter: 0");
    }

    #[test]
    fn failing_script_is_an_error() {
        let s = Settings {
            url: "http://h/x".into(),
            header_script: Some("exit 3".into()),
            ..Default::default()
        };
        let sc = Scripts::new(&s);
        let e = sc.current().unwrap_err();
        assert!(e.message().contains("header-script"), "{}", e.message());
    }

    #[test]
    fn static_headers_need_no_script() {
        let s = Settings {
            headers: vec!["A: b".into()],
            cookie: Some("c=d".into()),
            ..Default::default()
        };
        let sc = Scripts::new(&s);
        let e = sc.current().unwrap();
        assert_eq!(e.headers, vec!["A: b"]);
        assert_eq!(e.generation, 0);
    }
}
