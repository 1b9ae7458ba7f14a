//! A sparse image built while evaluating the data format: non-overlapping
//! segments of bytes or of one repeated byte, everything else zero.  Later
//! writes replace earlier ones, as in nbdkit.

use std::collections::BTreeMap;

/// One run of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Data(Vec<u8>),
    /// `n` copies of a byte.
    Fill(u8, u64),
}

impl Seg {
    pub fn len(&self) -> u64 {
        match self {
            Seg::Data(d) => d.len() as u64,
            Seg::Fill(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part `[from, from+n)` of this segment.
    fn piece(&self, from: u64, n: u64) -> Seg {
        match self {
            Seg::Data(d) => Seg::Data(d[from as usize..(from + n) as usize].to_vec()),
            Seg::Fill(b, _) => Seg::Fill(*b, n),
        }
    }
}

/// A sparse image: segments keyed by offset.
#[derive(Debug, Default)]
pub struct Image {
    segs: BTreeMap<u64, Seg>,
}

impl Image {
    pub fn new() -> Self {
        Image::default()
    }

    /// An image holding `data` at offset 0, and its length.
    pub fn from_data(data: Vec<u8>) -> (Image, u64) {
        let len = data.len() as u64;
        let mut img = Image::new();
        img.put(0, Seg::Data(data));
        (img, len)
    }

    /// True if the image is all zero.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// If the image is `len` copies of one byte, that byte.
    pub fn as_fill(&self, len: u64) -> Option<u8> {
        if len == 0 {
            return None;
        }
        if self.segs.is_empty() {
            return Some(0);
        }
        let mut it = self.segs.iter();
        match (it.next(), it.next()) {
            (Some((0, s)), None) if s.len() == len => match s {
                Seg::Fill(b, _) => Some(*b),
                Seg::Data(d) if d.iter().all(|&x| x == d[0]) => Some(d[0]),
                _ => None,
            },
            _ => None,
        }
    }

    /// If the image is exactly one data buffer of `len` bytes, that buffer.
    pub fn as_dense(&self, len: u64) -> Option<&[u8]> {
        let mut it = self.segs.iter();
        match (it.next(), it.next()) {
            (Some((0, Seg::Data(d))), None) if d.len() as u64 == len => Some(d),
            _ => None,
        }
    }

    /// The segments in order: `(offset, segment)`.
    pub fn segments(&self) -> impl Iterator<Item = (u64, &Seg)> {
        self.segs.iter().map(|(&k, s)| (k, s))
    }

    /// Make `[start, end)` zero.
    pub fn clear(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // A segment beginning before `start` may reach into the range.
        if let Some((&k, s)) = self.segs.range(..start).next_back() {
            let send = k + s.len();
            if send > start {
                let s = self.segs.remove(&k).unwrap_or(Seg::Fill(0, 0));
                self.segs.insert(k, s.piece(0, start - k));
                if send > end {
                    self.segs.insert(end, s.piece(end - k, send - end));
                }
            }
        }
        let inside: Vec<u64> = self.segs.range(start..end).map(|(&k, _)| k).collect();
        for k in inside {
            if let Some(s) = self.segs.remove(&k) {
                let send = k + s.len();
                if send > end {
                    self.segs.insert(end, s.piece(end - k, send - end));
                }
            }
        }
    }

    /// Write `seg` at `offset`, replacing what was there.
    pub fn put(&mut self, offset: u64, seg: Seg) {
        let len = seg.len();
        if len == 0 {
            return;
        }
        self.clear(offset, offset + len);
        self.insert(offset, seg);
    }

    /// Insert into a range known to be clear, joining a data segment that
    /// ends exactly here (so byte-by-byte writes make one buffer).
    fn insert(&mut self, offset: u64, seg: Seg) {
        if let Seg::Fill(0, _) = seg {
            return;
        }
        if let Some((&k, prev)) = self.segs.range_mut(..offset).next_back() {
            if k + prev.len() == offset {
                match (prev, &seg) {
                    (Seg::Data(p), Seg::Data(d)) if p.len() < (64 << 20) => {
                        p.extend_from_slice(d);
                        return;
                    }
                    (Seg::Fill(pb, pn), Seg::Fill(b, n)) if pb == b => {
                        *pn += n;
                        return;
                    }
                    _ => {}
                }
            }
        }
        self.segs.insert(offset, seg);
    }

    /// Copy `[0, len)` of `src` to `dst` (zeroes included).
    pub fn blit(&mut self, src: &Image, from: u64, len: u64, dst: u64) {
        self.blit_from(src, from, len, dst)
    }

    /// Copy `[from, from+len)` of `src` to `dst`, replacing what was there
    /// (zeroes included).
    pub fn blit_from(&mut self, src: &Image, from: u64, len: u64, dst: u64) {
        if len == 0 {
            return;
        }
        self.clear(dst, dst + len);
        let end = from + len;
        let mut pieces = Vec::new();
        if let Some((&k, s)) = src.segs.range(..from).next_back() {
            let send = k + s.len();
            if send > from {
                let stop = send.min(end);
                pieces.push((from, s.piece(from - k, stop - from)));
            }
        }
        for (&k, s) in src.segs.range(from..end) {
            let stop = (k + s.len()).min(end);
            if stop - k == s.len() {
                pieces.push((k, s.clone()));
            } else {
                pieces.push((k, s.piece(0, stop - k)));
            }
        }
        for (k, s) in pieces {
            self.insert(dst + (k - from), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(img: &Image, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        for (k, s) in img.segments() {
            let k = k as usize;
            match s {
                Seg::Data(d) => v[k..k + d.len()].copy_from_slice(d),
                Seg::Fill(b, n) => v[k..k + *n as usize].fill(*b),
            }
        }
        v
    }

    #[test]
    fn later_writes_win_and_neighbours_join() {
        let mut i = Image::new();
        for (k, b) in [1u8, 2, 3, 4].iter().enumerate() {
            i.put(k as u64, Seg::Data(vec![*b]));
        }
        assert_eq!(i.segments().count(), 1);
        i.put(1, Seg::Fill(9, 2));
        assert_eq!(bytes(&i, 5), [1, 9, 9, 4, 0]);
        i.put(0, Seg::Fill(0, 2));
        assert_eq!(bytes(&i, 5), [0, 0, 9, 4, 0]);
    }

    #[test]
    fn blit_copies_zeroes_too() {
        let mut src = Image::new();
        src.put(2, Seg::Data(vec![7, 8]));
        let mut dst = Image::new();
        dst.put(0, Seg::Fill(1, 6));
        dst.blit_from(&src, 1, 3, 1);
        assert_eq!(bytes(&dst, 6), [1, 0, 7, 8, 1, 1]);
        assert_eq!(src.as_fill(4), None);
        let mut f = Image::new();
        f.put(0, Seg::Data(vec![5, 5, 5]));
        assert_eq!(f.as_fill(3), Some(5));
        assert_eq!(Image::new().as_fill(3), Some(0));
    }
}
