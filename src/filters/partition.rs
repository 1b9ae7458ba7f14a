//! The `partition` filter: serve one partition of a partitioned disk
//! (`partition=N`, counting from 1), like `qemu-nbd -P`.  The table is read
//! when a connection is prepared: GPT when LBA 1 holds a GPT header (its
//! protective MBR is then ignored), otherwise MBR, with primary partitions
//! 1-4 and logical partitions from 5 along the chain of extended boot
//! records.  Every request is then shifted into the partition (see
//! [`crate::filters::offset::Window`]).
//!
//! `partition-sectorsize` (512 or 4096) is the size of an LBA; by default
//! the next layer's minimum block size when that is 512 or 4096, else 512.

use crate::error::{Error, Result};
use crate::filter::{Filter, FilterContext};
use crate::filters::offset::Window;
use crate::layers::{Backend, Context};
use crate::parse::{parse_size, parse_unsigned};
use nix::errno::Errno;

pub struct Partition {
    number: u32,
    sector_size: Option<u64>,
}

impl Partition {
    pub fn new() -> Self {
        Partition {
            number: 0,
            sector_size: None,
        }
    }
}

impl Default for Partition {
    fn default() -> Self {
        Self::new()
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::new(Errno::EINVAL, msg))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// MBR partition types that hold logical partitions (as Linux).
fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// One MBR or EBR table entry: (type byte, start sector, sector count).
fn mbr_entry(sector: &[u8], i: usize) -> (u8, u64, u64) {
    let at = 0x1be + i * 16;
    (
        sector[at + 4],
        le32(sector, at + 8) as u64,
        le32(sector, at + 12) as u64,
    )
}

/// The partition's byte offset and length.
pub(crate) fn find(next: &dyn Context, number: u32, sector_size: u64) -> Result<(u64, u64)> {
    let size = next.get_size()?;
    let ss = sector_size;
    if size < 2 * ss {
        return fail("disk is too small to be a partitioned disk");
    }
    crate::log::debug(format!("partition: disk size={size}"));
    let mut lba01 = vec![0u8; 2 * ss as usize];
    next.pread(&mut lba01, 0, 0)?;
    let (offset, range) =
        if size >= 2 * 34 * ss && &lba01[ss as usize..ss as usize + 8] == b"EFI PART" {
            find_gpt(next, number, ss, size, &lba01[ss as usize..])?
        } else if lba01[0x1fe] == 0x55 && lba01[0x1ff] == 0xaa {
            find_mbr(next, number, ss, size, &lba01[..ss as usize])?
        } else {
            return fail("disk does not contain MBR or GPT partition table signature");
        };
    if offset.checked_add(range).is_none_or(|end| end > size) {
        return fail(format!(
            "partition {number} is outside the disk \
             (offset {offset}, size {range}, disk size {size})"
        ));
    }
    Ok((offset, range))
}

fn find_mbr(next: &dyn Context, number: u32, ss: u64, size: u64, mbr: &[u8]) -> Result<(u64, u64)> {
    let n = number as usize;
    if n <= 4 {
        let (kind, start, count) = mbr_entry(mbr, n - 1);
        if count > 0 && kind != 0 && !is_extended(kind) {
            return Ok((start * ss, count * ss));
        }
        return fail(format!("MBR partition {number} not found"));
    }
    let Some((_, ep_start, ep_count)) = (0..4)
        .map(|i| mbr_entry(mbr, i))
        .find(|&(kind, _, count)| count > 0 && is_extended(kind))
    else {
        return fail(
            "MBR logical partition selected, \
             but there is no extended partition in the partition table",
        );
    };
    let ep_end = (ep_start + ep_count) * ss;
    let mut ebr = ep_start * ss;
    let mut sector = vec![0u8; ss as usize];
    for i in 5.. {
        // Each link must point strictly forward, inside the disk and
        // past the MBR, so the walk ends.
        if !ebr.is_multiple_of(ss) || ebr < ss || ebr >= size - ss {
            return fail(
                "invalid EBR chain: next EBR boot sector is located outside disk boundary",
            );
        }
        crate::log::debug(format!("partition: reading EBR at {ebr}"));
        next.pread(&mut sector, ebr, 0)?;
        if i == n {
            let (_, start, count) = mbr_entry(&sector, 0);
            let offset = ebr + start * ss;
            let range = count * ss;
            if offset <= ebr || offset + range > ep_end {
                return fail(format!(
                    "logical partition {number} start or size out of range \
                     (offset={offset}, range={range}, ep:startsect={ep_start}, \
                     ep:nrsects={ep_count})"
                ));
            }
            return Ok((offset, range));
        }
        let (_, link, count) = mbr_entry(&sector, 1);
        if link == 0 && count == 0 {
            break;
        }
        let next_ebr = (ep_start + link) * ss;
        if next_ebr <= ebr {
            return fail(format!(
                "invalid EBR chain: next EBR {next_ebr} <= current EBR {ebr}"
            ));
        }
        ebr = next_ebr;
    }
    fail(format!("MBR partition {number} not found"))
}

fn find_gpt(
    next: &dyn Context,
    number: u32,
    ss: u64,
    size: u64,
    header: &[u8],
) -> Result<(u64, u64)> {
    let entries_lba = le64(header, 0x48);
    let nr_entries = le32(header, 0x50) as u64;
    let entry_size = le32(header, 0x54) as u64;
    if entries_lba != 2 {
        return fail(
            "cannot support non-standard GPT header: \
             partition entries are not adjacent to header",
        );
    }
    if number as u64 > nr_entries {
        return fail(format!(
            "GPT partition number {number} out of range (the table has {nr_entries} entries)"
        ));
    }
    if entry_size < 128 || entry_size > ss || !ss.is_multiple_of(entry_size) {
        return fail(format!(
            "GPT partition entry size is invalid ({entry_size} bytes)"
        ));
    }
    if size < 3 * ss + 2 * nr_entries * entry_size {
        return fail("GPT partition table is too large for this disk");
    }
    let mut entry = [0u8; 128];
    let at = 2 * ss + (number as u64 - 1) * entry_size;
    next.pread(&mut entry, at, 0)?;
    if entry[..16].iter().all(|&b| b == 0) {
        return fail(format!("GPT partition {number} not found"));
    }
    let (first, last) = (le64(&entry, 0x20), le64(&entry, 0x28));
    if last < first {
        return fail(format!(
            "GPT partition {number} ends before it starts (first LBA {first}, last LBA {last})"
        ));
    }
    let offset = first.checked_mul(ss);
    let range = (last - first)
        .checked_add(1)
        .and_then(|n| n.checked_mul(ss));
    match (offset, range) {
        (Some(o), Some(r)) => Ok((o, r)),
        _ => fail(format!("partition {number} is outside the disk")),
    }
}

impl Filter for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit partition filter")
    }

    fn description(&self) -> &'static str {
        "Serve one partition of a partitioned disk."
    }

    fn config_help(&self) -> &'static str {
        "partition=<PART>    (required) The partition number (counting from 1).\n\
         partition-sectorsize=512|4k  Sector size of the partition table (default 512)."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "partition" => {
                let n = parse_unsigned("partition", value, u32::MAX as u64)?;
                if n == 0 {
                    return Err(Error::config("invalid partition number"));
                }
                self.number = n as u32;
            }
            "partition-sectorsize" => {
                let s = parse_size(value)?;
                if s != 512 && s != 4096 {
                    return Err(Error::config(
                        "partition-sectorsize can only be 512 or 4096",
                    ));
                }
                self.sector_size = Some(s);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.number == 0 {
            return Err(Error::config(
                "you must supply the partition parameter on the command line",
            ));
        }
        Ok(())
    }

    fn open(
        &self,
        next: &dyn Backend,
        readonly: bool,
        export: &str,
        is_tls: bool,
    ) -> Result<Box<dyn FilterContext>> {
        let next = next.open(readonly, export, is_tls)?;
        let (number, configured) = (self.number, self.sector_size);
        Ok(Box::new(Window::new(next, move |next| {
            let ss = match configured {
                Some(s) => s,
                None => match next.block_size()? {
                    Some(b) if b.minimum == 512 || b.minimum == 4096 => b.minimum as u64,
                    _ => 512,
                },
            };
            find(next, number, ss)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut f = Partition::new();
        assert!(f.config_complete().is_err());
        assert!(f.config("partition", "0").is_err());
        assert!(f.config("partition", "one").is_err());
        assert!(f.config("partition", "-1").is_err());
        assert!(f.config("partition-sectorsize", "1024").is_err());
        assert!(f.config("partition-sectorsize", "4k").unwrap());
        assert!(f.config("partition", "5").unwrap());
        f.config_complete().unwrap();
        assert_eq!((f.number, f.sector_size), (5, Some(4096)));
    }
}
