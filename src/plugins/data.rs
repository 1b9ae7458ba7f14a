//! The data plugin: a RAM disk (as `memory`, with the same allocators)
//! initialised from the command line: `nbdkit data [data=]'0 1 2 @0x1fe
//! 0x55 0xaa' [size=SIZE] [allocator=...]`, or `raw=BYTES` or
//! `base64=TEXT`.  The format is in `data/format.rs`; extra `KEY=VALUE`
//! parameters are the format's `$KEY` variables.

pub mod format;
pub mod image;

use super::memory::allocator::Allocator;
use super::memory::{AllocatorKind, MemoryHandle};
use crate::error::{Error, Result};
use crate::parse::{parse_size, MAX_SIZE};
use crate::plugin::{Handle, Plugin};
use format::{Node, Vars};
use image::{Image, Seg};
use std::sync::{Arc, Mutex};

/// Which of `data=`, `raw=`, `base64=` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Raw,
    Base64,
}

/// The data plugin.
pub struct DataPlugin {
    input: Option<(Kind, String)>,
    size: Option<u64>,
    kind: AllocatorKind,
    kind_given: bool,
    /// Extra parameters: the `$VAR`s.
    vars: Vec<(String, String)>,
    ast: Vec<Node>,
    debug_ast: bool,
    disk: Mutex<Option<(u64, Arc<dyn Allocator>)>>,
}

impl Default for DataPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl DataPlugin {
    /// An unconfigured data plugin.
    pub fn new() -> Self {
        DataPlugin {
            input: None,
            size: None,
            kind: AllocatorKind::Sparse,
            kind_given: false,
            vars: Vec::new(),
            ast: Vec::new(),
            debug_ast: false,
            disk: Mutex::new(None),
        }
    }

    /// Evaluate the input: the image and its implied size.
    fn image(&self) -> Result<(Image, u64)> {
        match &self.input {
            Some((Kind::Data, _)) => format::evaluate(&self.ast),
            Some((Kind::Raw, s)) => Ok(Image::from_data(s.as_bytes().to_vec())),
            Some((Kind::Base64, s)) => Ok(Image::from_data(decode_base64(s)?)),
            None => Err(Error::config(
                "data: raw|base64|data parameter was not specified",
            )),
        }
    }
}

/// Parameters and the environment, for `$VAR`; records what was used.
struct VarTable<'a> {
    params: &'a [(String, String)],
    used: Vec<String>,
}

impl Vars for VarTable<'_> {
    fn lookup(&mut self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.params.iter().find(|(k, _)| k == name) {
            self.used.push(name.to_string());
            return Some(v.clone());
        }
        std::env::var(name).ok()
    }
}

/// Decode standard base64 (with `=` padding; whitespace is ignored).
pub fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut pad = 0usize;
    let mut n = 0usize;
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                n += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => continue,
            _ => {
                return Err(Error::config(format!(
                    "data: base64: invalid character '{}' at offset {i}",
                    c.escape_ascii()
                )))
            }
        };
        if pad > 0 {
            return Err(Error::config(format!(
                "data: base64: data after '=' padding at offset {i}"
            )));
        }
        n += 1;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if !n.is_multiple_of(4) || pad > 2 {
        return Err(Error::config(
            "data: base64: the length is not a multiple of 4 (missing '=' padding?)",
        ));
    }
    Ok(out)
}

const CALLBACKS: &[&str] = &[
    "config",
    "config_complete",
    "config_help",
    "dump_plugin",
    "get_ready",
    "open",
    "get_size",
    "block_size",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "can_fast_zero",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
];

fn is_var_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

impl Plugin for DataPlugin {
    fn name(&self) -> &'static str {
        "data"
    }

    fn description(&self) -> &'static str {
        "data plugin: a RAM disk initialised from the command line"
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        Some("data")
    }

    fn config_help(&self) -> &'static str {
        "[data=]<DATA>|raw=<BYTES>|base64=<B64>  Disk contents (exactly one)\n\
         size=<SIZE>                  Truncate or extend the disk to SIZE\n\
         allocator=sparse|malloc|zstd Backend allocation strategy\n\
         VAR=VALUE                    Value of $VAR in the data string"
    }

    fn callbacks(&self) -> &'static [&'static str] {
        CALLBACKS
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let kind = match key {
            "data" => Kind::Data,
            "raw" => Kind::Raw,
            "base64" => Kind::Base64,
            "size" if self.size.is_some() => {
                return Err(Error::config(format!(
                    "size given more than once (second: {value})"
                )))
            }
            "size" => {
                self.size = Some(parse_size(value)?);
                return Ok(());
            }
            "allocator" if self.kind_given => {
                return Err(Error::config(format!(
                    "allocator given more than once (second: {value})"
                )))
            }
            "allocator" => {
                self.kind = AllocatorKind::parse(value)?;
                self.kind_given = true;
                return Ok(());
            }
            _ if !is_var_name(key) => {
                return Err(Error::config(format!("unknown parameter '{key}'")))
            }
            _ if self.vars.iter().any(|(k, _)| k == key) => {
                return Err(Error::config(format!(
                    "{key} given more than once (second: {value})"
                )))
            }
            _ => {
                self.vars.push((key.to_string(), value.to_string()));
                return Ok(());
            }
        };
        if self.input.is_some() {
            return Err(Error::config(
                "data: raw|base64|data parameter must be specified exactly once",
            ));
        }
        self.input = Some((kind, value.to_string()));
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some((kind, text)) = self.input.clone() else {
            return Err(Error::config(
                "data: raw|base64|data parameter was not specified",
            ));
        };
        if kind != Kind::Data {
            if let Some((k, _)) = self.vars.first() {
                return Err(Error::config(format!(
                    "data: unknown parameter '{k}' (extra parameters are $VARs, and only data= has them)"
                )));
            }
            if kind == Kind::Base64 {
                decode_base64(&text)?;
            }
            return Ok(());
        }
        let mut table = VarTable {
            params: &self.vars,
            used: Vec::new(),
        };
        let ast = format::parse(&text, &mut table)?;
        if let Some((k, _)) = self.vars.iter().find(|(k, _)| !table.used.contains(k)) {
            return Err(Error::config(format!(
                "data: unknown parameter '{k}' (no ${k} in the data string uses it)"
            )));
        }
        if self.debug_ast {
            crate::log::debug(format!("data: AST: {ast:?}"));
        }
        self.ast = ast;
        Ok(())
    }

    fn debug_flag(&mut self, flag: &str, value: &str) -> Result<bool> {
        match flag {
            "AST" => {
                self.debug_ast = value != "0";
                Ok(true)
            }
            "dir" => Ok(true),
            _ => Ok(false),
        }
    }

    fn dump_plugin(&self) -> Vec<String> {
        vec![
            "data_base64=yes".into(),
            "mlock=yes".into(),
            "zstd=yes".into(),
        ]
    }

    fn get_ready(&self) -> Result<()> {
        let (img, implied) = self.image()?;
        let size = self.size.unwrap_or(implied);
        if size > MAX_SIZE {
            return Err(Error::config(
                "data: the disk would be larger than 2^63-1 bytes",
            ));
        }
        crate::log::debug(format!("data: implied size {implied}, final size {size}"));
        let storage = self.kind.create(size)?;
        write_image(&*storage, img, size)?;
        *self.disk.lock().unwrap_or_else(|e| e.into_inner()) = Some((size, storage));
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        match &*self.disk.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, s)) => s.after_fork(),
            None => Ok(()),
        }
    }

    fn open(&self, _readonly: bool, _export_name: &str, _is_tls: bool) -> Result<Box<dyn Handle>> {
        match &*self.disk.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((size, s)) => Ok(Box::new(MemoryHandle::new(*size, s.clone()))),
            None => Err(Error::config("data: the disk was not created")),
        }
    }
}

/// Store the image's bytes below `size` in `storage`.
fn write_image(storage: &dyn Allocator, img: Image, size: u64) -> Result<()> {
    let mut fill = Vec::new();
    for (off, seg) in img.segments() {
        if off >= size {
            break;
        }
        let n = seg.len().min(size - off);
        match seg {
            Seg::Data(d) => storage.write(&d[..n as usize], off)?,
            Seg::Fill(b, _) => {
                let chunk = n.min(1 << 20) as usize;
                if fill.len() < chunk || fill.first() != Some(b) {
                    fill = vec![*b; chunk];
                }
                let mut done = 0u64;
                while done < n {
                    let k = (n - done).min(fill.len() as u64) as usize;
                    storage.write(&fill[..k], off + done)?;
                    done += k as u64;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
