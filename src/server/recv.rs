//! The buffered read half of a connection.
//!
//! Like `std::io::BufReader`, one `read(2)` may bring in several pipelined
//! requests.  Unlike it, the buffer's memory is touched only as far as the
//! client's traffic needs: it starts at one page and doubles each time a
//! read fills all of it, up to [`READ_BUFFER`].  `BufReader` zero-fills its
//! whole buffer on the first read from a reader that is not a std socket,
//! which for a shared socket would make every idle connection cost its
//! full 256 KiB of resident memory.

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use std::io::{self, BufRead, Read};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most bytes buffered in front of a connection.
pub const READ_BUFFER: usize = 256 * 1024;
/// The buffer an idle connection starts with.
const FIRST: usize = 4096;

pub struct Reader {
    inner: Box<dyn Read + Send>,
    /// Initialized bytes; `buf[pos..filled]` is data not yet consumed.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl Reader {
    pub fn new(inner: Box<dyn Read + Send>) -> Self {
        Reader {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
        }
    }

    /// The data read but not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// Read whatever the socket `fd` (the one this reader reads) has for
    /// us now, without waiting: `Ok(None)` if nothing has arrived,
    /// `Ok(Some(n))` with the bytes added to the buffer otherwise (0 at
    /// end of file, or when the buffer has no room: the caller's next
    /// read finds out which).  Only for a plain socket, where nothing sits
    /// between `fd` and this buffer.
    pub fn fill_now(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<usize>> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
        } else if self.filled == self.buf.len() && self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        if self.buf.is_empty() {
            self.buf.resize(FIRST, 0);
        }
        if self.filled == self.buf.len() {
            return Ok(Some(0));
        }
        match recv(
            fd.as_raw_fd(),
            &mut self.buf[self.filled..],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                self.filled += n;
                if self.filled == self.buf.len() && self.buf.len() < READ_BUFFER {
                    let grown = (self.buf.len() * 2).min(READ_BUFFER);
                    self.buf.resize(grown, 0);
                }
                Ok(Some(n))
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Nothing buffered and a large read: straight into the caller's
        // buffer (a write's payload), as BufReader does.
        if self.pos == self.filled && out.len() >= self.buf.len().max(FIRST) {
            return self.inner.read(out);
        }
        let n = {
            let data = self.fill_buf()?;
            let n = data.len().min(out.len());
            out[..n].copy_from_slice(&data[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Reader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
            if self.buf.is_empty() {
                self.buf.resize(FIRST, 0);
            }
            let n = loop {
                match self.inner.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.filled = n;
            // The client sends more than fits: give it more room next time.
            if n == self.buf.len() && self.buf.len() < READ_BUFFER {
                let grown = (self.buf.len() * 2).min(READ_BUFFER);
                self.buf.resize(grown, 0);
            }
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in chunks of at most `step`.
    struct Chunks {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_everything_in_order_whatever_the_sizes() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 7, 4096, 10_000, 1 << 20] {
            let mut r = Reader::new(Box::new(Chunks {
                data: data.clone(),
                at: 0,
                step,
            }));
            let mut got = Vec::new();
            let mut sizes = [3usize, 28, 4096, 65536, 1].iter().cycle();
            loop {
                let mut b = vec![0u8; *sizes.next().unwrap()];
                match r.read_exact(&mut b) {
                    Ok(()) => got.extend_from_slice(&b),
                    Err(_) => {
                        // The tail, shorter than the last request.
                        got.extend_from_slice(r.buffer());
                        break;
                    }
                }
            }
            assert!(got.len() <= data.len());
            assert_eq!(&got[..], &data[..got.len()], "step {step}");
        }
    }

    #[test]
    fn fill_now_takes_what_has_arrived_without_waiting() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut r = Reader::new(Box::new(a.try_clone().unwrap()));
        assert_eq!(r.fill_now(a.as_fd()).unwrap(), None);
        b.write_all(b"hello").unwrap();
        assert_eq!(r.fill_now(a.as_fd()).unwrap(), Some(5));
        b.write_all(b" world").unwrap();
        assert_eq!(r.fill_now(a.as_fd()).unwrap(), Some(6));
        assert_eq!(r.buffer(), b"hello world");
        let mut got = [0u8; 11];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        drop(b);
        assert_eq!(r.fill_now(a.as_fd()).unwrap(), Some(0), "end of file");
    }

    #[test]
    fn the_buffer_grows_only_with_traffic() {
        let mut r = Reader::new(Box::new(Chunks {
            data: vec![1; 100],
            at: 0,
            step: 100,
        }));
        assert!(r.buf.capacity() == 0);
        let mut b = [0u8; 28];
        r.read_exact(&mut b).unwrap();
        assert_eq!(r.buf.len(), FIRST);
        let mut r = Reader::new(Box::new(Chunks {
            data: vec![1; 1 << 20],
            at: 0,
            step: 1 << 20,
        }));
        for _ in 0..7 {
            r.read_exact(&mut b).unwrap();
            r.fill_buf().unwrap();
            let rest = r.buffer().len();
            r.consume(rest);
        }
        assert_eq!(r.buf.len(), READ_BUFFER);
    }
}
