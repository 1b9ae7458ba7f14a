//! The `evil` filter: corrupt data on its way back from reads, to test that
//! checksums and clients notice.  Writes pass unchanged.
//!
//! Modes (`evil=`):
//! - `cosmic-rays`: every bit read flips with probability P;
//! - `stuck-bits` (default): bits at fixed places of the disk are stuck high
//!   or low (each with probability P); a stuck bit reads as its stuck value
//!   with probability `evil-stuck-probability` (default 1);
//! - `stuck-wires`: like stuck-bits, but the stuck places are positions
//!   within every request (as if wires between disk and client were stuck),
//!   so they move with the request's offset.
//!
//! Everything derives from `evil-seed=`, so a seed gives the same corruption
//! every run (for cosmic-rays: the same sequence of reads).  The places of
//! stuck bits are found with geometric skips over a pseudo-random stream
//! seeded by (seed, disk block), so a read costs time proportional to the
//! bits it corrupts, not to its size.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::layers::{Backend, Context};
use crate::plugin::ThreadModel;
use crate::server::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    CosmicRays,
    StuckBits,
    StuckWires,
}

/// splitmix64: small, fast, good enough for fault injection.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Bits to skip before the next hit, for hits with probability `p`.
    fn gap(&mut self, p: f64) -> u64 {
        if p >= 1.0 {
            return 0;
        }
        let g = self.unit().ln() / (1.0 - p).ln();
        if g.is_finite() && g < 1e18 {
            g as u64
        } else {
            u64::MAX / 2
        }
    }
}

struct Shared {
    mode: Mode,
    p: f64,
    stuck_p: f64,
    seed: u64,
    /// Stuck-bits block size in bytes (a power of two).
    block: u64,
    /// The cosmic-rays stream, in request order.
    rays: Mutex<Rng>,
    /// Whether a stuck bit shows on a given read (stuck probability < 1).
    coin: AtomicU64,
}

impl Shared {
    fn coin(&self) -> f64 {
        let mut r = Rng(self
            .coin
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
        r.unit()
    }

    /// Apply the stuck bits of stream `rng` whose positions (in bits from
    /// `base_bit`) fall in `buf`, which starts at bit `start_bit` of the
    /// stream; the stream covers `len_bits`.
    fn apply_stuck(&self, rng: &mut Rng, buf: &mut [u8], skip_bits: u64, len_bits: u64) {
        let end = skip_bits + buf.len() as u64 * 8;
        let mut pos = rng.gap(self.p);
        while pos < len_bits.min(end) {
            let high = rng.next() & 1 == 1;
            if pos >= skip_bits && (self.stuck_p >= 1.0 || self.coin() < self.stuck_p) {
                let i = pos - skip_bits;
                let (byte, bit) = ((i / 8) as usize, (i % 8) as u8);
                if high {
                    buf[byte] |= 1 << bit;
                } else {
                    buf[byte] &= !(1 << bit);
                }
            }
            pos = pos.saturating_add(1).saturating_add(rng.gap(self.p));
        }
    }

    fn corrupt(&self, buf: &mut [u8], offset: u64) {
        if self.p <= 0.0 || buf.is_empty() {
            return;
        }
        match self.mode {
            Mode::CosmicRays => {
                let mut rng = lock(&self.rays);
                let bits = buf.len() as u64 * 8;
                let mut pos = rng.gap(self.p);
                while pos < bits {
                    buf[(pos / 8) as usize] ^= 1 << (pos % 8);
                    pos = pos.saturating_add(1).saturating_add(rng.gap(self.p));
                }
            }
            Mode::StuckWires => {
                let mut rng = Rng(self.seed ^ 0x0057_17c3_3e11);
                let bits = buf.len() as u64 * 8;
                self.apply_stuck(&mut rng, buf, 0, bits);
            }
            Mode::StuckBits => {
                let end = offset + buf.len() as u64;
                let mut b = offset / self.block;
                while b * self.block < end {
                    let start = b * self.block;
                    let from = offset.max(start);
                    let to = end.min(start + self.block);
                    let slice = &mut buf[(from - offset) as usize..(to - offset) as usize];
                    let mut rng = Rng(self.seed ^ b.wrapping_mul(0xd1b5_4a32_d192_ed03));
                    rng.next();
                    self.apply_stuck(&mut rng, slice, (from - start) * 8, self.block * 8);
                    b += 1;
                }
            }
        }
    }
}

/// A probability: `N%`, `0..1`, or `A:B`.
fn parse_probability(key: &str, value: &str) -> Result<f64> {
    let bad = || Error::config(format!("{key}: could not parse probability '{value}'"));
    let v = value.trim();
    let p = if let Some(n) = v.strip_suffix('%') {
        n.trim().parse::<f64>().map_err(|_| bad())? / 100.0
    } else if let Some((a, b)) = v.split_once(':') {
        let a: f64 = a.trim().parse().map_err(|_| bad())?;
        let b: f64 = b.trim().parse().map_err(|_| bad())?;
        if b == 0.0 {
            return Err(bad());
        }
        a / b
    } else {
        v.parse::<f64>().map_err(|_| bad())?
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::config(format!(
            "{key}: probability out of range, must be [0..1]: '{value}'"
        )));
    }
    Ok(p)
}

pub struct Evil {
    mode: Mode,
    p: Option<f64>,
    stuck_p: f64,
    seed: Option<u64>,
    shared: Arc<Shared>,
}

fn make_shared(mode: Mode, p: f64, stuck_p: f64, seed: u64) -> Arc<Shared> {
    // About 100 stuck bits per block, between 64 bytes and 1 GiB.
    let bytes = if p > 0.0 { 100.0 / (8.0 * p) } else { 1e12 };
    let block = (bytes.clamp(64.0, (1u64 << 30) as f64) as u64).next_power_of_two();
    Arc::new(Shared {
        mode,
        p,
        stuck_p,
        seed,
        block: block.min(1 << 30),
        rays: Mutex::new(Rng(seed)),
        coin: AtomicU64::new(seed ^ 0xc011_c011),
    })
}

impl Evil {
    pub fn new() -> Self {
        Evil {
            mode: Mode::StuckBits,
            p: None,
            stuck_p: 1.0,
            seed: None,
            shared: make_shared(Mode::StuckBits, 0.0, 1.0, 0),
        }
    }
}

impl Default for Evil {
    fn default() -> Self {
        Self::new()
    }
}

impl Filter for Evil {
    fn name(&self) -> &'static str {
        "evil"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit evil filter")
    }

    fn description(&self) -> &'static str {
        "Add random data corruption to reads."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config_help(&self) -> &'static str {
        "evil=cosmic-rays|stuck-bits|stuck-wires\n\
         \x20                              Set the mode (default: stuck-bits).\n\
         evil-probability=PROB          Probability of flipped or stuck bit.\n\
         evil-seed=SEED                 Random number seed.\n\
         evil-stuck-probability=PROB    Probability of stuck bit being stuck."
    }

    fn thread_model(&self) -> ThreadModel {
        // The cosmic-rays stream is consumed in request order: one request
        // at a time per connection keeps a seed's corruption reproducible.
        if self.mode == Mode::CosmicRays {
            ThreadModel::SerializeRequests
        } else {
            ThreadModel::Parallel
        }
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "evil" | "evil-mode" => {
                self.mode = match value {
                    "cosmic-rays" | "cosmic" => Mode::CosmicRays,
                    "stuck-bits" | "stuck-bit" | "stuck" => Mode::StuckBits,
                    "stuck-wires" | "stuck-wire" => Mode::StuckWires,
                    _ => {
                        return Err(Error::config(format!(
                            "evil: unknown mode: '{value}' \
                             (expecting cosmic-rays, stuck-bits or stuck-wires)"
                        )))
                    }
                }
            }
            "evil-probability" => self.p = Some(parse_probability(key, value)?),
            "evil-stuck-probability" => self.stuck_p = parse_probability(key, value)?,
            "evil-seed" => {
                self.seed = Some(value.trim().parse().map_err(|_| {
                    Error::config(format!("evil-seed: could not parse number: \"{value}\""))
                })?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        self.shared = make_shared(self.mode, self.p.unwrap_or(1e-8), self.stuck_p, seed);
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        Ok(Box::new(EvilContext {
            next: next.open(readonly, export, is_tls)?,
            shared: self.shared.clone(),
        }))
    }
}

struct EvilContext {
    next: Box<dyn Context>,
    shared: Arc<Shared>,
}

impl FilterContext for EvilContext {
    fn next(&self) -> &dyn Context {
        &*self.next
    }

    fn pread(&self, buf: &mut [u8], offset: u64, f: u32) -> Result<()> {
        self.next.pread(buf, offset, f)?;
        self.shared.corrupt(buf, offset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(b: &[u8]) -> u32 {
        b.iter().map(|x| x.count_ones()).sum()
    }

    #[test]
    fn stuck_bits_stay_put_whatever_the_read() {
        let s = make_shared(Mode::StuckBits, 1e-3, 1.0, 7);
        let mut whole = vec![0u8; 1 << 16];
        s.corrupt(&mut whole, 0);
        let n = ones(&whole);
        // 524288 bits * 1e-3, half stuck high: about 262.
        assert!((150..400).contains(&n), "{n}");
        // A read of part of the disk sees the same bits.
        let mut part = vec![0u8; 1000];
        s.corrupt(&mut part, 12345);
        assert_eq!(part, whole[12345..13345]);
        // Stuck low bits show in a disk of ones.
        let mut high = vec![0xffu8; 1 << 16];
        s.corrupt(&mut high, 0);
        assert!(ones(&high) < (1 << 19));
    }

    #[test]
    fn stuck_wires_move_with_the_request() {
        let s = make_shared(Mode::StuckWires, 1e-3, 1.0, 7);
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        s.corrupt(&mut a, 0);
        s.corrupt(&mut b, 1 << 20);
        assert_eq!(a, b);
        assert!(ones(&a) > 0);
    }

    #[test]
    fn cosmic_rays_follow_the_seed() {
        let run = |seed| {
            let s = make_shared(Mode::CosmicRays, 1e-3, 1.0, seed);
            let mut v = vec![0u8; 1 << 16];
            s.corrupt(&mut v, 0);
            let mut w = vec![0u8; 1 << 16];
            s.corrupt(&mut w, 0);
            (v, w)
        };
        let (a1, a2) = run(1);
        assert_eq!(run(1), (a1.clone(), a2.clone()));
        assert_ne!(a1, a2);
        assert_ne!(run(2).0, a1);
        let off = make_shared(Mode::CosmicRays, 0.0, 1.0, 1);
        let mut z = vec![0u8; 4096];
        off.corrupt(&mut z, 0);
        assert_eq!(ones(&z), 0);
    }

    #[test]
    fn parameters() {
        let mut f = Evil::new();
        assert!(f.config("evil", "cosmic-rays").unwrap());
        assert_eq!(f.thread_model(), ThreadModel::SerializeRequests);
        assert!(f.config("evil", "gamma-rays").is_err());
        assert!(f.config("evil-probability", "1e-6").unwrap());
        assert!(f.config("evil-probability", "10%").unwrap());
        assert!(f.config("evil-probability", "2").is_err());
        assert!(f.config("evil-stuck-probability", "-0.5").is_err());
        assert!(f.config("evil-seed", "x").is_err());
        assert!(f.config("evil-seed", "42").unwrap());
        assert!(!f.config("size", "1").unwrap());
    }
}
