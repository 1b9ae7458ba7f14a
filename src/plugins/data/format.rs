//! The data plugin's format: a parser from the `data=` string to a syntax
//! tree ([`Node`]), and the evaluator that turns the tree into a sparse
//! [`Image`].  The syntax follows nbdkit-data-plugin(1): bytes, `@OFFSET`
//! (`@+N`, `@-N`, `@^ALIGN`), `"strings"`, `le16:`/`be32:`... words,
//! `<FILE`, `<(SCRIPT)`, `( ... )` groups, `EXPR*N`, `EXPR[N:M]`,
//! `EXPR -> \NAME`, `\NAME`, `$VAR` and `# comments`.
//!
//! Every error names the offending token: its offset in the string (or in
//! the `$VAR` it came from) and the text there.

use super::image::{Image, Seg};
use crate::error::{Error, Result};
use crate::parse::{parse_unsigned, MAX_SIZE};
use std::io::{Read, Seek, SeekFrom};
use std::rc::Rc;
use std::sync::Arc;

/// Deepest nesting of `( ... )` and `$VAR` accepted (a guard against
/// exhausting the stack).
const MAX_DEPTH: usize = 200;

/// Where a token came from: the `data` string or a variable's value.
#[derive(Debug)]
pub struct Source {
    /// `the data string` or `$NAME`.
    pub what: String,
    pub text: Vec<u8>,
}

/// A token's position, for error messages.
#[derive(Clone)]
pub struct Pos {
    src: Arc<Source>,
    at: usize,
}

impl std::fmt::Debug for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.src.what, self.at)
    }
}

impl Pos {
    /// An error pointing at this position.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        let text = &self.src.text;
        let at = self.at.min(text.len());
        let near: String = String::from_utf8_lossy(&text[at..])
            .chars()
            .take_while(|&c| c != '\n')
            .take(16)
            .collect();
        let near = if at >= text.len() {
            "end of string".to_string()
        } else {
            format!("near '{}'", near.trim_end())
        };
        Error::config(format!(
            "data: {msg} (at offset {at} of {}, {near})",
            self.src.what
        ))
    }
}

/// One expression of the format.
#[derive(Debug)]
pub enum Expr {
    /// `( ... )`, a `$VAR`, or the whole string: a nested scope.
    List(Vec<Node>),
    Byte(u8),
    /// `@OFFSET`
    Abs(u64),
    /// `@+N` (false) or `@-N` (true)
    Rel(bool, u64),
    /// `@^ALIGNMENT` (a power of 2)
    Align(u64),
    /// `<FILE`
    File(String),
    /// `<(SCRIPT)`
    Script(String),
    /// `"STRING"` or a `le16:`... word
    Bytes(Vec<u8>),
    /// `\NAME`
    Name(String),
    /// `EXPR -> \NAME`
    Assign(String, Box<Node>),
    /// `EXPR * N`
    Repeat(Box<Node>, u64),
    /// `EXPR[N:M]`
    Slice(Box<Node>, u64, Option<u64>),
}

/// An expression and where it was written.
#[derive(Debug)]
pub struct Node {
    pub expr: Expr,
    pub pos: Pos,
}

impl Node {
    fn is_data(&self) -> bool {
        !matches!(self.expr, Expr::Abs(_) | Expr::Rel(..) | Expr::Align(_))
    }
}

/// Looks up `$VAR`s (plugin parameters, then the environment) and records
/// which were used.
pub trait Vars {
    fn lookup(&mut self, name: &str) -> Option<String>;
}

/// Parse a whole `data=` string.
pub fn parse(text: &str, vars: &mut dyn Vars) -> Result<Vec<Node>> {
    let src = Arc::new(Source {
        what: "the data string".into(),
        text: text.as_bytes().to_vec(),
    });
    let mut p = Parser {
        src,
        i: 0,
        vars,
        expanding: Vec::new(),
        depth: 0,
    };
    p.list(None)
}

struct Parser<'v> {
    src: Arc<Source>,
    i: usize,
    vars: &'v mut dyn Vars,
    expanding: Vec<String>,
    depth: usize,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

impl Parser<'_> {
    fn text(&self) -> &[u8] {
        &self.src.text
    }

    fn peek(&self) -> Option<u8> {
        self.text().get(self.i).copied()
    }

    fn pos_at(&self, at: usize) -> Pos {
        Pos {
            src: self.src.clone(),
            at,
        }
    }

    fn err_at(&self, at: usize, msg: impl std::fmt::Display) -> Error {
        self.pos_at(at).error(msg)
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if is_space(c) {
                self.i += 1;
            } else if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A list of expressions up to the end of the string, or (when `open`
    /// is the offset of a `(`) up to the matching `)`.
    fn list(&mut self, open: Option<usize>) -> Result<Vec<Node>> {
        let mut list: Vec<Node> = Vec::new();
        loop {
            self.skip_space();
            let start = self.i;
            let Some(c) = self.peek() else {
                if let Some(o) = open {
                    return Err(self.err_at(o, "unmatched '('"));
                }
                return Ok(list);
            };
            let expr = match c {
                b'(' => {
                    self.i += 1;
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(self.err_at(start, "( ... ) nested too deeply"));
                    }
                    let inner = self.list(Some(start))?;
                    self.depth -= 1;
                    Expr::List(inner)
                }
                b')' => {
                    if open.is_none() {
                        return Err(self.err_at(start, "unmatched ')'"));
                    }
                    self.i += 1;
                    return Ok(list);
                }
                b'*' => {
                    self.i += 1;
                    let last = self.postfix_target(&mut list, start, "*N")?;
                    self.skip_space();
                    let n_at = self.i;
                    if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        return Err(self.err_at(n_at, "*N: expected a number after '*'"));
                    }
                    let n = self.number(false)?;
                    Expr::Repeat(Box::new(last), n)
                }
                b'[' => {
                    self.i += 1;
                    let last = self.postfix_target(&mut list, start, "[N:M]")?;
                    let (n, m) = self.slice(start)?;
                    Expr::Slice(Box::new(last), n, m)
                }
                b'-' => {
                    if self.text().get(self.i + 1) != Some(&b'>') {
                        return Err(self.err_at(start, "unexpected '-' (expected '-> \\NAME')"));
                    }
                    self.i += 2;
                    let last = self.postfix_target(&mut list, start, "->")?;
                    self.skip_space();
                    if self.peek() != Some(b'\\') {
                        return Err(self.err_at(self.i, "-> must be followed by \\NAME"));
                    }
                    let name = self.name()?;
                    Expr::Assign(name, Box::new(last))
                }
                b'\\' => Expr::Name(self.name()?),
                b'$' => self.var()?,
                b'@' => self.offset()?,
                b'<' => self.file_or_script()?,
                b'"' => Expr::Bytes(self.string()?),
                b'0'..=b'9' => {
                    let v = self.number(false)?;
                    if v > 255 {
                        return Err(self.err_at(start, format!("BYTE {v} is out of range 0..255")));
                    }
                    Expr::Byte(v as u8)
                }
                b'l' | b'b' => Expr::Bytes(self.word()?),
                _ => {
                    let ch = String::from_utf8_lossy(&self.text()[start..])
                        .chars()
                        .next()
                        .unwrap_or('?');
                    return Err(self.err_at(start, format!("unexpected character '{ch}'")));
                }
            };
            list.push(Node {
                expr,
                pos: self.pos_at(start),
            });
        }
    }

    /// Take the expression a postfix operator applies to.
    fn postfix_target(&self, list: &mut Vec<Node>, at: usize, op: &str) -> Result<Node> {
        match list.pop() {
            None => Err(self.err_at(at, format!("{op} must follow an expression"))),
            Some(n) if !n.is_data() => Err(self.err_at(
                at,
                format!("{op} cannot be applied to an offset (@...) expression"),
            )),
            Some(n) => Ok(n),
        }
    }

    /// A number: decimal, `0x` hex or leading-`0` octal; with
    /// `suffix`, a decimal number may end in a size suffix (`k`, `M`...).
    fn number(&mut self, suffix: bool) -> Result<u64> {
        let start = self.i;
        let t = self.text();
        let (radix, mut j) = if t[start..].starts_with(b"0x") || t[start..].starts_with(b"0X") {
            (16, start + 2)
        } else if t[start] == b'0' && t.get(start + 1).is_some_and(|c| c.is_ascii_digit()) {
            (8, start + 1)
        } else {
            (10, start)
        };
        let digits_at = j;
        while t.get(j).is_some_and(|c| c.is_ascii_hexdigit()) {
            if radix != 16 && !t[j].is_ascii_digit() {
                break;
            }
            j += 1;
        }
        let digits = std::str::from_utf8(&t[digits_at..j]).unwrap_or("");
        if digits.is_empty() {
            return Err(self.err_at(start, "0x must be followed by hexadecimal digits"));
        }
        if radix == 8 && digits.bytes().any(|c| c > b'7') {
            return Err(self.err_at(start, format!("invalid octal number '0{digits}'")));
        }
        let mut v = u64::from_str_radix(digits, radix)
            .map_err(|_| self.err_at(start, "number is too large"))?;
        if suffix && radix == 10 {
            if let Some(&c) = t.get(j) {
                let scale: Option<u64> = match c {
                    b'b' | b'B' => Some(1),
                    b's' | b'S' => Some(512),
                    b'k' | b'K' => Some(1 << 10),
                    b'm' | b'M' => Some(1 << 20),
                    b'g' | b'G' => Some(1 << 30),
                    b't' | b'T' => Some(1 << 40),
                    b'p' | b'P' => Some(1 << 50),
                    b'e' | b'E' => Some(1 << 60),
                    _ => None,
                };
                let ends = t.get(j + 1).is_none_or(|c| !c.is_ascii_alphanumeric());
                if let (Some(s), true) = (scale, ends) {
                    v = v
                        .checked_mul(s)
                        .filter(|&v| v <= MAX_SIZE)
                        .ok_or_else(|| self.err_at(start, "offset is too large"))?;
                    j += 1;
                }
            }
        }
        self.i = j;
        Ok(v)
    }

    fn offset(&mut self) -> Result<Expr> {
        let start = self.i;
        self.i += 1;
        let kind = self.peek();
        if matches!(kind, Some(b'+' | b'-' | b'^')) {
            self.i += 1;
        }
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.err_at(start, "@ must be followed by OFFSET, +N, -N or ^ALIGNMENT"));
        }
        let n = self.number(true)?;
        if n > MAX_SIZE {
            return Err(self.err_at(start, "offset is too large"));
        }
        Ok(match kind {
            Some(b'+') => Expr::Rel(false, n),
            Some(b'-') => Expr::Rel(true, n),
            Some(b'^') => {
                if !n.is_power_of_two() {
                    return Err(
                        self.err_at(start, format!("@^{n}: alignment must be a power of 2"))
                    );
                }
                Expr::Align(n)
            }
            _ => Expr::Abs(n),
        })
    }

    /// `[N:M]`, `[:M]`, `[N:]` or `[:]` (the `[` already consumed).
    fn slice(&mut self, open: usize) -> Result<(u64, Option<u64>)> {
        let bad = |p: &Self| p.err_at(open, "[N:M]: expected [N:M], [:M], [N:] or [:]");
        self.skip_space();
        let n = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.number(false)?
        } else {
            0
        };
        self.skip_space();
        if self.peek() != Some(b':') {
            return Err(bad(self));
        }
        self.i += 1;
        self.skip_space();
        let m = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            Some(self.number(false)?)
        } else {
            None
        };
        self.skip_space();
        if self.peek() != Some(b']') {
            return Err(bad(self));
        }
        self.i += 1;
        if let Some(m) = m {
            if n > m {
                return Err(self.err_at(open, format!("[{n}:{m}]: start is after end")));
            }
        }
        Ok((n, m))
    }

    /// `\NAME` (at the backslash).
    fn name(&mut self) -> Result<String> {
        let start = self.i;
        self.i += 1;
        let from = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            self.i += 1;
        }
        if self.i == from {
            return Err(self.err_at(
                start,
                "\\ must be followed by a NAME (letters, digits, - and _)",
            ));
        }
        Ok(String::from_utf8_lossy(&self.text()[from..self.i]).into_owned())
    }

    /// `$VAR`: parse the variable's value as a nested scope.
    fn var(&mut self) -> Result<Expr> {
        let start = self.i;
        self.i += 1;
        let from = self.i;
        if !self
            .peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        {
            return Err(self.err_at(start, "$ must be followed by a variable name"));
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        let name = String::from_utf8_lossy(&self.text()[from..self.i]).into_owned();
        if self.expanding.contains(&name) {
            return Err(self.err_at(start, format!("${name} refers to itself")));
        }
        if self.expanding.len() >= MAX_DEPTH {
            return Err(self.err_at(start, "$VAR nested too deeply"));
        }
        let Some(value) = self.vars.lookup(&name) else {
            return Err(self.err_at(
                start,
                format!("${name}: variable not found (not a parameter nor in the environment)"),
            ));
        };
        let src = Arc::new(Source {
            what: format!("${name}"),
            text: value.into_bytes(),
        });
        let saved_src = std::mem::replace(&mut self.src, src);
        let saved_i = std::mem::replace(&mut self.i, 0);
        self.expanding.push(name);
        let r = self.list(None);
        self.expanding.pop();
        self.src = saved_src;
        self.i = saved_i;
        Ok(Expr::List(r?))
    }

    fn file_or_script(&mut self) -> Result<Expr> {
        let start = self.i;
        if self.text().get(start + 1) == Some(&b'(') {
            // <(SCRIPT): up to the matching ')'.
            let from = start + 2;
            let mut level = 0usize;
            let mut j = from;
            loop {
                match self.text().get(j) {
                    None => return Err(self.err_at(start, "<(SCRIPT) has no closing ')'")),
                    Some(b'(') => level += 1,
                    Some(b')') if level == 0 => break,
                    Some(b')') => level -= 1,
                    _ => {}
                }
                j += 1;
            }
            let script = String::from_utf8_lossy(&self.text()[from..j]).into_owned();
            self.i = j + 1;
            return Ok(Expr::Script(script));
        }
        let from = start + 1;
        let mut j = from;
        while self
            .text()
            .get(j)
            .is_some_and(|&c| !is_space(c) && !matches!(c, b'*' | b'[' | b')'))
        {
            j += 1;
        }
        if j == from {
            return Err(self.err_at(start, "< must be followed by a file name"));
        }
        self.i = j;
        Ok(Expr::File(
            String::from_utf8_lossy(&self.text()[from..j]).into_owned(),
        ))
    }

    /// `"STRING"` with C escapes.
    fn string(&mut self) -> Result<Vec<u8>> {
        let start = self.i;
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err_at(start, "unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let esc_at = self.i - 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err_at(start, "unterminated string"));
                    };
                    self.i += 1;
                    let b = match e {
                        b'a' => 7,
                        b'b' => 8,
                        b'f' => 0xc,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0xb,
                        b'x' => {
                            let t = self.text();
                            let hex = t
                                .get(self.i..self.i + 2)
                                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                            let Some(h) = hex else {
                                return Err(self.err_at(
                                    esc_at,
                                    "\\x must be followed by exactly two hexadecimal digits",
                                ));
                            };
                            let v = u8::from_str_radix(std::str::from_utf8(h).unwrap_or("0"), 16)
                                .unwrap_or(0);
                            self.i += 2;
                            v
                        }
                        b'0'..=b'7' => {
                            // Octal: up to three digits.
                            let mut v: u32 = (e - b'0') as u32;
                            for _ in 0..2 {
                                match self.peek() {
                                    Some(d @ b'0'..=b'7') => {
                                        v = v * 8 + (d - b'0') as u32;
                                        self.i += 1;
                                    }
                                    _ => break,
                                }
                            }
                            if v > 255 {
                                return Err(
                                    self.err_at(esc_at, "octal escape is larger than \\377")
                                );
                            }
                            v as u8
                        }
                        b'u' | b'U' => {
                            return Err(
                                self.err_at(esc_at, "unicode escapes are not supported in strings")
                            )
                        }
                        other => other,
                    };
                    out.push(b);
                }
                _ => out.push(c),
            }
        }
    }

    /// `le16:WORD` ... `be64:WORD`.
    fn word(&mut self) -> Result<Vec<u8>> {
        let start = self.i;
        let mut j = start;
        while self
            .text()
            .get(j)
            .is_some_and(|&c| !is_space(c) && !matches!(c, b')' | b'(' | b'*' | b'[' | b'#'))
        {
            j += 1;
        }
        let tok = String::from_utf8_lossy(&self.text()[start..j]).into_owned();
        self.i = j;
        let Some((kind, value)) = tok.split_once(':') else {
            return Err(self.err_at(start, "expected le16:, le32:, le64:, be16:, be32: or be64:"));
        };
        let (bits, big) = match kind {
            "le16" => (16, false),
            "le32" => (32, false),
            "le64" => (64, false),
            "be16" => (16, true),
            "be32" => (32, true),
            "be64" => (64, true),
            _ => {
                return Err(
                    self.err_at(start, "expected le16:, le32:, le64:, be16:, be32: or be64:")
                )
            }
        };
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let v = parse_unsigned(kind, value, max).map_err(|e| self.err_at(start, e.message()))?;
        let n = bits / 8;
        let bytes = if big {
            v.to_be_bytes()[8 - n..].to_vec()
        } else {
            v.to_le_bytes()[..n].to_vec()
        };
        Ok(bytes)
    }
}

// ---- evaluation ----------------------------------------------------------

/// Names in scope: a linked list of `\NAME` assignments.
enum Env<'a> {
    Nil,
    Bind(&'a str, &'a Node, Rc<Env<'a>>),
}

impl<'a> Env<'a> {
    /// The named expression and the scope it was defined in.
    fn lookup(self: &Rc<Self>, name: &str) -> Option<(&'a Node, Rc<Env<'a>>)> {
        let mut e = self.clone();
        loop {
            let next = match &*e {
                Env::Nil => return None,
                Env::Bind(n, node, parent) if *n == name => return Some((node, parent.clone())),
                Env::Bind(_, _, parent) => parent.clone(),
            };
            e = next;
        }
    }
}

/// Evaluate the whole string: the image and its implied size.
pub fn evaluate(ast: &[Node]) -> Result<(Image, u64)> {
    eval_list(ast, Rc::new(Env::Nil))
}

fn too_large(pos: &Pos) -> Error {
    pos.error("the data would be larger than 2^63-1 bytes")
}

fn add(pos: &Pos, a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .filter(|&v| v <= MAX_SIZE)
        .ok_or_else(|| too_large(pos))
}

/// Evaluate a list in a new scope: `(image, size)` where size is the
/// furthest offset reached.
fn eval_list<'a>(nodes: &'a [Node], env: Rc<Env<'a>>) -> Result<(Image, u64)> {
    let mut img = Image::new();
    let mut env = env;
    let mut off = 0u64;
    let mut size = 0u64;
    for n in nodes {
        match &n.expr {
            Expr::Byte(b) => {
                img.put(off, Seg::Data(vec![*b]));
                off = add(&n.pos, off, 1)?;
            }
            Expr::Bytes(s) => {
                let end = add(&n.pos, off, s.len() as u64)?;
                img.put(off, Seg::Data(s.clone()));
                off = end;
            }
            Expr::Abs(x) => off = *x,
            Expr::Rel(false, x) => off = add(&n.pos, off, *x)?,
            Expr::Rel(true, x) => {
                if *x > off {
                    return Err(n.pos.error(format!(
                        "@-{x} would move before the start (the offset is {off})"
                    )));
                }
                off -= x;
            }
            Expr::Align(a) => {
                off = off
                    .checked_next_multiple_of(*a)
                    .filter(|&v| v <= MAX_SIZE)
                    .ok_or_else(|| too_large(&n.pos))?;
            }
            Expr::File(name) => {
                let data = read_file(&n.pos, name, 0, None)?;
                let end = add(&n.pos, off, data.len() as u64)?;
                img.put(off, Seg::Data(data));
                off = end;
            }
            Expr::Script(s) => {
                let data = run_script(&n.pos, s, None)?;
                let end = add(&n.pos, off, data.len() as u64)?;
                img.put(off, Seg::Data(data));
                off = end;
            }
            Expr::Assign(name, inner) => {
                env = Rc::new(Env::Bind(name, inner, env.clone()));
            }
            Expr::Name(name) => {
                let Some((node, def_env)) = env.lookup(name) else {
                    return Err(n.pos.error(format!("\\{name} is not defined here")));
                };
                let (sub, len) = eval_node(node, def_env)?;
                let end = add(&n.pos, off, len)?;
                img.blit(&sub, 0, len, off);
                off = end;
            }
            Expr::List(_) | Expr::Repeat(..) | Expr::Slice(..) => {
                let (sub, len) = eval_node(n, env.clone())?;
                let end = add(&n.pos, off, len)?;
                img.blit(&sub, 0, len, off);
                off = end;
            }
        }
        size = size.max(off);
    }
    Ok((img, size))
}

/// Evaluate one expression as its own scope.
fn eval_node<'a>(node: &'a Node, env: Rc<Env<'a>>) -> Result<(Image, u64)> {
    match &node.expr {
        Expr::List(nodes) => eval_list(nodes, env),
        Expr::Repeat(inner, times) => {
            let times = *times;
            if let Expr::Byte(b) = inner.expr {
                if times > MAX_SIZE {
                    return Err(too_large(&node.pos));
                }
                let mut img = Image::new();
                img.put(0, Seg::Fill(b, times));
                return Ok((img, times));
            }
            let (sub, len) = eval_node(inner, env)?;
            let total = len
                .checked_mul(times)
                .filter(|&v| v <= MAX_SIZE)
                .ok_or_else(|| too_large(&node.pos))?;
            let mut img = Image::new();
            if let Some(b) = sub.as_fill(len) {
                img.put(0, Seg::Fill(b, total));
            } else if let Some(d) = sub.as_dense(len) {
                // One buffer for the whole repeat.
                let mut buf = Vec::new();
                usize::try_from(total)
                    .ok()
                    .and_then(|t| buf.try_reserve_exact(t).ok())
                    .ok_or_else(|| {
                        node.pos
                            .error(format!("cannot allocate {total} bytes for this repeat"))
                    })?;
                for _ in 0..times {
                    buf.extend_from_slice(d);
                }
                img.put(0, Seg::Data(buf));
            } else if !sub.is_empty() {
                for k in 0..times {
                    img.blit(&sub, 0, len, k * len);
                }
            }
            Ok((img, total))
        }
        Expr::Slice(inner, n, m) => {
            let (n, m) = (*n, *m);
            // Files and scripts are read only as far as needed, so that
            // </dev/urandom[:512] and <(yes)[:10] end.
            match &inner.expr {
                Expr::File(name) => {
                    let data = read_file(&inner.pos, name, n, m)?;
                    return Ok(Image::from_data(data));
                }
                Expr::Script(s) => {
                    let mut data = run_script(&inner.pos, s, m)?;
                    let skip = (n as usize).min(data.len());
                    data.drain(..skip);
                    return Ok(Image::from_data(data));
                }
                _ => {}
            }
            let (sub, len) = eval_node(inner, env)?;
            let m = m.unwrap_or(len);
            if n > m || m > len {
                return Err(node.pos.error(format!(
                    "[{n}:{m}] is not a valid slice of an expression of {len} bytes"
                )));
            }
            let mut img = Image::new();
            img.blit_from(&sub, n, m - n, 0);
            Ok((img, m - n))
        }
        _ => eval_list(std::slice::from_ref(node), env),
    }
}

/// `<FILE`, or `<FILE[skip:end]`.
fn read_file(pos: &Pos, name: &str, skip: u64, end: Option<u64>) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| pos.error(format!("<{name}: {e}"));
    let mut f = std::fs::File::open(name).map_err(fail)?;
    if f.metadata().map_err(fail)?.is_dir() {
        return Err(pos.error(format!("<{name}: is a directory")));
    }
    if skip > 0 && f.seek(SeekFrom::Start(skip)).is_err() {
        std::io::copy(&mut (&mut f).take(skip), &mut std::io::sink()).map_err(fail)?;
    }
    let mut data = Vec::new();
    match end {
        Some(e) => (&mut f).take(e - skip).read_to_end(&mut data),
        None => f.read_to_end(&mut data),
    }
    .map_err(fail)?;
    Ok(data)
}

/// `<(SCRIPT)`: the output of `/bin/sh -c SCRIPT`, or its first `limit`
/// bytes (then the script is stopped).
fn run_script(pos: &Pos, script: &str, limit: Option<u64>) -> Result<Vec<u8>> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| pos.error(format!("<(SCRIPT): cannot run /bin/sh: {e}")))?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| pos.error("<(SCRIPT): no pipe"))?;
    let mut data = Vec::new();
    let r = match limit {
        Some(l) => (&mut out).take(l).read_to_end(&mut data),
        None => out.read_to_end(&mut data),
    };
    drop(out);
    let stopped = limit.is_some_and(|l| data.len() as u64 >= l);
    if stopped {
        // Enough output: stop the script and whatever it started.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = child
        .wait()
        .map_err(|e| pos.error(format!("<(SCRIPT): wait: {e}")))?;
    r.map_err(|e| pos.error(format!("<(SCRIPT): reading its output: {e}")))?;
    if !stopped && !status.success() {
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(s)) => format!("was killed by signal {s}"),
            _ => "failed".into(),
        };
        return Err(pos.error(format!("<(SCRIPT): the script {how}")));
    }
    Ok(data)
}
