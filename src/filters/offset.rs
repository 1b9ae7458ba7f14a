//! The `offset` filter: serve a window of the plugin, `offset=` bytes in
//! and `range=` bytes long (by default to the plugin's end).  Every request
//! is shifted by the offset; the window is checked against the plugin's
//! size when a connection opens.
//!
//! [`Window`] is also the context of the `partition` filter, which finds
//! its window in a partition table instead of on the command line.

use crate::error::{Error, Result};
use crate::extents::Extents;
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::parse::parse_size;
use nix::errno::Errno;
use std::sync::OnceLock;

pub struct Offset {
    offset: u64,
    range: Option<u64>,
}

impl Offset {
    pub fn new() -> Self {
        Offset {
            offset: 0,
            range: None,
        }
    }
}

impl Default for Offset {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Offset {
    fn name(&self) -> &'static str {
        "offset"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit offset filter")
    }

    fn description(&self) -> &'static str {
        "Serve a byte range of the plugin."
    }

    fn config_help(&self) -> &'static str {
        "offset=<OFFSET>     The start offset to serve (default 0).\n\
         range=<LENGTH>      The total size to serve (default: rest of file)."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "offset" => self.offset = parse_size(value)?,
            "range" => self.range = Some(parse_size(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let next = next.open(readonly, export, is_tls)?;
        let (offset, range) = (self.offset, self.range);
        Ok(Box::new(Window::new(next, move |next| {
            let size = next.get_size()?;
            if offset > size {
                return Err(Error::new(
                    Errno::EINVAL,
                    format!(
                        "offset greater than size of underlying file \
                         (offset {offset}, size {size})"
                    ),
                ));
            }
            match range {
                Some(r) if r > size - offset => Err(Error::new(
                    Errno::EINVAL,
                    format!(
                        "offset+range is larger than the real size of the underlying file \
                         (offset {offset}, range {r}, size {size})"
                    ),
                )),
                Some(r) => Ok((offset, r)),
                None => Ok((offset, size - offset)),
            }
        })))
    }
}

type Locate = Box<dyn Fn(&dyn Context) -> Result<(u64, u64)> + Send + Sync>;

/// A context serving `[start, start + len)` of the next layer as a whole
/// disk; the window is found by `locate` when the connection is prepared.
pub struct Window {
    next: Box<dyn Context>,
    locate: Locate,
    window: OnceLock<(u64, u64)>,
}

impl Window {
    pub fn new(
        next: Box<dyn Context>,
        locate: impl Fn(&dyn Context) -> Result<(u64, u64)> + Send + Sync + 'static,
    ) -> Self {
        Window {
            next,
            locate: Box::new(locate),
            window: OnceLock::new(),
        }
    }

    fn window(&self) -> Result<(u64, u64)> {
        self.window
            .get()
            .copied()
            .ok_or_else(|| Error::new(Errno::EIO, "window used before the connection was prepared"))
    }

    fn start(&self) -> Result<u64> {
        Ok(self.window()?.0)
    }
}

impl FilterContext for Window {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn prepare(&self, _readonly: bool) -> Result<()> {
        let w = (self.locate)(&*self.next)?;
        crate::log::debug(format!("window offset={} range={}", w.0, w.1));
        let _ = self.window.set(w);
        Ok(())
    }

    fn get_size(&self) -> Result<u64> {
        Ok(self.window()?.1)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: u32) -> Result<()> {
        self.next.pread(buf, self.start()? + offset, flags)
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: u32) -> Result<()> {
        self.next.pwrite(buf, self.start()? + offset, flags)
    }

    fn trim(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next.trim(count, self.start()? + offset, flags)
    }

    fn zero(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next.zero(count, self.start()? + offset, flags)
    }

    fn cache(&self, count: u64, offset: u64, flags: u32) -> Result<()> {
        self.next.cache(count, self.start()? + offset, flags)
    }

    fn extents(&self, extents: &mut Extents, flags: u32) -> Result<()> {
        let (start, len) = self.window()?;
        let end = extents.end().min(len);
        let mut inner = Extents::new(start + extents.start(), start + end);
        self.next.extents(&mut inner, flags)?;
        for e in inner.list() {
            extents.add(e.offset - start, e.length, e.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Offset::new();
        assert!(f.config("offset", "1M").unwrap());
        assert!(f.config("range", "512").unwrap());
        assert_eq!((f.offset, f.range), (1 << 20, Some(512)));
        assert!(!f.config("partition", "1").unwrap());
        assert!(f.config("offset", "-1").is_err());
        assert!(f.config("range", "lots").is_err());
    }
}
