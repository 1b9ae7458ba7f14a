//! An export opened for one connection: the outermost layer's context plus
//! the capabilities asked once and cached (as nbdkit's backend does), and the
//! transmission flags derived from them.

use crate::error::Result;
use crate::layers::{Backend, Context};
use crate::plugin::{BlockSize, CacheMode, FuaMode, ThreadModel, ZeroMode};
use crate::protocol::consts::*;

/// Capabilities of an open export, after nbdkit's rules: no trim, zero or
/// FUA on a read-only export; no fast zero without zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub write: bool,
    pub flush: bool,
    pub rotational: bool,
    pub trim: bool,
    pub zero: ZeroMode,
    pub fast_zero: bool,
    pub fua: FuaMode,
    pub extents: bool,
    pub multi_conn: bool,
    pub cache: CacheMode,
}

/// An open export.
pub struct Export {
    ctx: Box<dyn Context>,
    /// The canonical export name.
    pub name: String,
    pub size: u64,
    pub caps: Caps,
    thread_model: ThreadModel,
}

impl Export {
    /// Open `name` (already resolved from `""` to the default export) on the
    /// backend, prepare it and query its size and capabilities.
    pub fn open(
        backend: &dyn Backend,
        name: &str,
        readonly: bool,
        thread_model: ThreadModel,
    ) -> Result<Export> {
        let ctx = backend.open(readonly, name, crate::server::tls::is_tls())?;
        ctx.prepare(readonly)?;
        let size = ctx.get_size()?;
        let write = !readonly && ctx.can_write()?;
        let zero = if write {
            ctx.can_zero()?
        } else {
            ZeroMode::None
        };
        let caps = Caps {
            write,
            flush: ctx.can_flush()?,
            rotational: ctx.is_rotational()?,
            trim: write && ctx.can_trim()?,
            zero,
            fast_zero: zero != ZeroMode::None && ctx.can_fast_zero()?,
            fua: if write { ctx.can_fua()? } else { FuaMode::None },
            extents: ctx.can_extents()?,
            multi_conn: ctx.can_multi_conn()?,
            cache: ctx.can_cache()?,
        };
        Ok(Export {
            ctx,
            name: name.to_string(),
            size,
            caps,
            thread_model,
        })
    }

    /// The outermost layer's context.
    pub fn ctx(&self) -> &dyn Context {
        &*self.ctx
    }

    pub fn description(&self) -> Result<Option<String>> {
        self.ctx.export_description()
    }

    pub fn block_size(&self) -> Result<Option<BlockSize>> {
        self.ctx.block_size()
    }

    /// Transmission flags; `structured` is whether structured replies (or
    /// extended headers) were negotiated, which is what allows DF.
    pub fn eflags(&self, structured: bool) -> u16 {
        let c = &self.caps;
        let mut f = NBD_FLAG_HAS_FLAGS;
        if !c.write {
            f |= NBD_FLAG_READ_ONLY;
        }
        if c.flush {
            f |= NBD_FLAG_SEND_FLUSH;
        }
        if c.fua != FuaMode::None {
            f |= NBD_FLAG_SEND_FUA;
        }
        if c.rotational {
            f |= NBD_FLAG_ROTATIONAL;
        }
        if c.trim {
            f |= NBD_FLAG_SEND_TRIM;
        }
        if c.zero != ZeroMode::None {
            f |= NBD_FLAG_SEND_WRITE_ZEROES;
        }
        if c.fast_zero {
            f |= NBD_FLAG_SEND_FAST_ZERO;
        }
        if structured {
            f |= NBD_FLAG_SEND_DF;
        }
        if c.multi_conn && self.thread_model > ThreadModel::SerializeConnections {
            f |= NBD_FLAG_CAN_MULTI_CONN;
        }
        if c.cache != CacheMode::None {
            f |= NBD_FLAG_SEND_CACHE;
        }
        f
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.finalize() {
            crate::log::error(format!("finalize: {e}"));
        }
    }
}
