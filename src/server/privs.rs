//! `-u USER` and `-g GROUP`: run as another user once the listening sockets
//! exist.
//!
//! Names are looked up at startup, so a typo is reported before anything is
//! bound or forked; the switch itself happens in the serving process before
//! the pidfile is written and before any plugin thread starts.  As nbdkit
//! does, `-g` sets the group and drops supplementary groups, then `-u` sets
//! the user; `-u` alone leaves the groups as they were.

use crate::error::{Error, Result};
use nix::unistd::{Gid, Group, Uid, User};

/// The user and group to become.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    uid: Option<Uid>,
    gid: Option<Gid>,
}

impl Identity {
    /// Look up `-u` and `-g` (names, or numbers when no such name exists).
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Identity> {
        let uid = user
            .map(|u| {
                lookup(u, "-u", "user name or uid", |n| {
                    User::from_name(n).ok().flatten().map(|p| p.uid)
                })
            })
            .transpose()?;
        let gid = group
            .map(|g| {
                lookup(g, "-g", "group name or gid", |n| {
                    Group::from_name(n).ok().flatten().map(|gr| gr.gid)
                })
            })
            .transpose()?;
        Ok(Identity { uid, gid })
    }

    /// Become this identity (group first: afterwards we may lack the right).
    pub fn assume(&self) -> Result<()> {
        if let Some(gid) = self.gid {
            nix::unistd::setgid(gid).map_err(|e| Error::os(e, "setgid"))?;
            nix::unistd::setgroups(&[gid]).map_err(|e| Error::os(e, "setgroups"))?;
            crate::log::debug(format!("changed group to {gid}"));
        }
        if let Some(uid) = self.uid {
            nix::unistd::setuid(uid).map_err(|e| Error::os(e, "setuid"))?;
            crate::log::debug(format!("changed user to {uid}"));
        }
        Ok(())
    }
}

/// `name` looked up with `by_name`, else read as a number.
fn lookup<T: From<u32>>(
    name: &str,
    option: &str,
    what: &str,
    by_name: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    by_name(name)
        .or_else(|| name.parse::<u32>().ok().map(T::from))
        .ok_or_else(|| Error::config(format!("{option} option: {name} is not a valid {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let id = Identity::resolve(Some("root"), Some("0")).unwrap();
        assert_eq!(id.uid, Some(Uid::from_raw(0)));
        assert_eq!(id.gid, Some(Gid::from_raw(0)));
        let id = Identity::resolve(Some("12345"), None).unwrap();
        assert_eq!(id.uid, Some(Uid::from_raw(12345)));
        assert_eq!(id.gid, None);
        let e = Identity::resolve(Some("no-such-user-here"), None).unwrap_err();
        assert!(e.message().contains("not a valid user name or uid"));
        let e = Identity::resolve(None, Some("no-such-group-here")).unwrap_err();
        assert!(e.message().contains("not a valid group name or gid"));
        assert_eq!(Identity::resolve(None, None).unwrap(), Identity::default());
    }
}
