//! Unit tests of the memory plugin and its allocators.

use super::allocator::{Allocator, PAGE_SIZE};
use super::malloc::Malloc;
use super::sparse::Sparse;
use super::zstd::new_zstd;
use super::*;
use crate::extents::{Extent, Extents, HOLE, ZERO};
use proptest::prelude::*;
use std::thread;

const PS: u64 = PAGE_SIZE as u64;

fn all(size: u64) -> Vec<Arc<dyn Allocator>> {
    vec![
        Arc::new(Sparse::new()),
        Arc::new(Malloc::new(size, false).unwrap()),
        Arc::new(new_zstd()),
    ]
}

fn read(a: &dyn Allocator, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xaau8; len];
    a.read(&mut buf, offset).unwrap();
    buf
}

fn extents(a: &dyn Allocator, start: u64, end: u64) -> Vec<Extent> {
    let mut e = Extents::new(start, end);
    a.extents(&mut e).unwrap();
    e.into_vec()
}

#[test]
fn fresh_disk_reads_zero() {
    for a in all(4 * PS) {
        assert!(
            read(&*a, 0, 4 * PAGE_SIZE).iter().all(|&b| b == 0),
            "{}",
            a.name()
        );
    }
}

#[test]
fn unaligned_writes_straddling_pages() {
    for a in all(4 * PS) {
        let data: Vec<u8> = (0..PAGE_SIZE + 1000).map(|i| (i % 251) as u8 + 1).collect();
        let off = PS - 500;
        a.write(&data, off).unwrap();
        assert_eq!(read(&*a, off, data.len()), data, "{}", a.name());
        // Bytes around stay zero.
        assert_eq!(read(&*a, off - 10, 10), vec![0; 10]);
        assert_eq!(read(&*a, off + data.len() as u64, 10), vec![0; 10]);
        // A read straddling the written area's edges.
        let r = read(&*a, off - 3, 6);
        assert_eq!(r, vec![0, 0, 0, 1, 2, 3]);
        // Overwrite in the middle, unaligned.
        a.write(&[9, 9, 9], PS + 1).unwrap();
        assert_eq!(read(&*a, PS, 5)[1..4], [9, 9, 9]);
    }
}

#[test]
fn zero_partial_and_whole_pages() {
    for a in all(4 * PS) {
        a.write(&vec![7u8; 3 * PAGE_SIZE], 0).unwrap();
        // Partial zero in page 0, whole page 1, partial page 2.
        a.zero(2 * PS, PS / 2).unwrap();
        let r = read(&*a, 0, 3 * PAGE_SIZE);
        assert!(r[..PAGE_SIZE / 2].iter().all(|&b| b == 7));
        assert!(r[PAGE_SIZE / 2..PAGE_SIZE * 5 / 2].iter().all(|&b| b == 0));
        assert!(
            r[PAGE_SIZE * 5 / 2..].iter().all(|&b| b == 7),
            "{}",
            a.name()
        );
        a.zero(0, 100).unwrap();
    }
}

#[test]
fn sparse_frees_pages_that_become_zero() {
    let a = Sparse::new();
    a.write(&vec![1u8; 3 * PAGE_SIZE], 0).unwrap();
    assert_eq!(a.allocated_pages(), 3);
    a.zero(PS, PS).unwrap(); // whole page 1
    assert_eq!(a.allocated_pages(), 2);
    a.zero(100, 0).unwrap(); // partial page 0: stays
    assert_eq!(a.allocated_pages(), 2);
    a.zero(PS - 100, 100).unwrap(); // rest of page 0: freed
    assert_eq!(a.allocated_pages(), 1);
    a.zero(u64::MAX / 4, 0).unwrap(); // huge range: everything
    assert_eq!(a.allocated_pages(), 0);
    let z = new_zstd();
    z.write(&[1], 5).unwrap();
    z.zero(1, 5).unwrap();
    assert_eq!(z.allocated_pages(), 0);
}

#[test]
fn sparse_chunks_come_and_go() {
    use super::sparse::CHUNK_PAGES;
    let a = Sparse::new();
    let chunk = CHUNK_PAGES * PS;
    // A write straddling two chunks creates both.
    let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 253) as u8 + 1).collect();
    a.write(&data, chunk - PS - 17).unwrap();
    assert_eq!(a.chunks(), 2);
    assert_eq!(a.allocated_pages(), 4);
    assert_eq!(read(&a, chunk - PS - 17, data.len()), data);
    // Zeroing the first chunk's part releases that chunk only.
    a.zero(PS + 17, chunk - PS - 17).unwrap();
    assert_eq!(a.chunks(), 1);
    assert_eq!(
        read(&a, chunk - PS - 17, PAGE_SIZE + 17),
        vec![0; PAGE_SIZE + 17]
    );
    assert_eq!(read(&a, chunk, 2 * PAGE_SIZE - 17), data[PAGE_SIZE + 17..]);
    // Far-apart writes on a huge disk: one chunk each, extents see holes
    // between them without visiting the gap.
    a.write(&[5], 1 << 50).unwrap();
    assert_eq!(a.chunks(), 2);
    let e = extents(&a, 0, (1 << 50) + PS);
    assert_eq!(e.len(), 4);
    assert_eq!(e[3].offset, 1 << 50);
    a.zero(u64::MAX / 2, 0).unwrap();
    assert_eq!((a.chunks(), a.allocated_pages()), (0, 0));
}

#[test]
fn sparse_extents_merge_and_report_holes() {
    for a in [
        Arc::new(Sparse::new()) as Arc<dyn Allocator>,
        Arc::new(new_zstd()),
    ] {
        let size = 8 * PS;
        assert_eq!(
            extents(&*a, 0, size),
            vec![Extent {
                offset: 0,
                length: size,
                flags: HOLE | ZERO
            }]
        );
        a.write(&[1], 0).unwrap();
        a.write(&[1], PS).unwrap(); // adjacent page: merged
        a.write(&[1], 4 * PS + 7).unwrap();
        assert_eq!(
            extents(&*a, 0, size),
            vec![
                Extent {
                    offset: 0,
                    length: 2 * PS,
                    flags: 0
                },
                Extent {
                    offset: 2 * PS,
                    length: 2 * PS,
                    flags: HOLE | ZERO
                },
                Extent {
                    offset: 4 * PS,
                    length: PS,
                    flags: 0
                },
                Extent {
                    offset: 5 * PS,
                    length: 3 * PS,
                    flags: HOLE | ZERO
                },
            ]
        );
        // Unaligned window starting in the middle of data.
        assert_eq!(
            extents(&*a, 100, 2 * PS + 5),
            vec![
                Extent {
                    offset: 100,
                    length: 2 * PS - 100,
                    flags: 0
                },
                Extent {
                    offset: 2 * PS,
                    length: 5,
                    flags: HOLE | ZERO
                },
            ]
        );
    }
    let m = Malloc::new(4 * PS, false).unwrap();
    assert_eq!(
        extents(&m, 10, 4 * PS),
        vec![Extent {
            offset: 10,
            length: 4 * PS - 10,
            flags: 0
        }]
    );
}

#[test]
fn largest_disk() {
    const SIZE: u64 = 9223372036854775807;
    for a in [
        Arc::new(Sparse::new()) as Arc<dyn Allocator>,
        Arc::new(new_zstd()),
    ] {
        let a = &*a;
        a.write(&[1u8; 512], 0).unwrap();
        a.write(&[2u8; 65536], 1000000001).unwrap();
        a.write(&[3u8; 511], 9223372036854775296).unwrap();
        assert_eq!(read(a, 0, 512), vec![1u8; 512]);
        assert_eq!(read(a, 1000000001, 65536), vec![2u8; 65536]);
        assert_eq!(read(a, 9223372036854775296, 511), vec![3u8; 511]);
        assert_eq!(read(a, 2000000000, 512), vec![0u8; 512]);
        let e = extents(a, 0, SIZE);
        assert_eq!(e.first().unwrap().flags, 0);
        assert_eq!(e.last().unwrap().flags, 0);
        assert_eq!(e.last().unwrap().offset + e.last().unwrap().length, SIZE);
        assert_eq!(e.len(), 5);
        a.zero(SIZE, 0).unwrap();
        assert_eq!(extents(a, 0, SIZE).len(), 1);
        assert_eq!(read(a, 9223372036854775296, 511), vec![0u8; 511]);
    }
}

#[test]
fn concurrent_disjoint_writers_and_readers() {
    // Regions of an awkward size so that threads share pages.
    const REGION: usize = 10_007;
    const THREADS: usize = 8;
    let size = (REGION * THREADS) as u64;
    for a in all(size) {
        thread::scope(|s| {
            for t in 0..THREADS {
                let a = a.clone();
                s.spawn(move || {
                    let off = (t * REGION) as u64;
                    for round in 0..40u8 {
                        let v = round.wrapping_mul(7).wrapping_add(t as u8) | 1;
                        a.write(&vec![v; REGION], off).unwrap();
                        assert_eq!(read(&*a, off, REGION), vec![v; REGION]);
                        if round % 5 == 0 {
                            a.zero(REGION as u64, off).unwrap();
                            assert_eq!(read(&*a, off, REGION), vec![0; REGION]);
                        }
                        // Unchecked whole-disk reads and extents race with the
                        // other threads' writes.
                        read(&*a, 0, size as usize);
                        let mut e = Extents::new(0, size);
                        a.extents(&mut e).unwrap();
                    }
                    a.write(&vec![t as u8 + 1; REGION], off).unwrap();
                });
            }
        });
        for t in 0..THREADS {
            let r = read(&*a, (t * REGION) as u64, REGION);
            assert_eq!(r, vec![t as u8 + 1; REGION], "{} thread {t}", a.name());
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Read(u64, usize),
}

const MODEL_SIZE: u64 = 5 * PS + 123;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..MODEL_SIZE, 1usize..(2 * PAGE_SIZE), any::<u8>()).prop_map(|(o, n, b)| {
            let n = n.min((MODEL_SIZE - o) as usize);
            Op::Write(o, (0..n).map(|i| b.wrapping_add(i as u8)).collect())
        }),
        (0..MODEL_SIZE, 0..(3 * PS)).prop_map(|(o, n)| Op::Zero(o, n.min(MODEL_SIZE - o))),
        (0..MODEL_SIZE, 1usize..(3 * PAGE_SIZE))
            .prop_map(|(o, n)| Op::Read(o, n.min((MODEL_SIZE - o) as usize))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn allocators_match_vec_model(ops in proptest::collection::vec(op(), 1..25)) {
        for a in all(MODEL_SIZE) {
            let mut model = vec![0u8; MODEL_SIZE as usize];
            for op in &ops {
                match op {
                    Op::Write(o, d) => {
                        a.write(d, *o).unwrap();
                        model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
                    }
                    Op::Zero(o, n) => {
                        a.zero(*n, *o).unwrap();
                        model[*o as usize..(*o + *n) as usize].fill(0);
                    }
                    Op::Read(o, n) => {
                        prop_assert_eq!(
                            &read(&*a, *o, *n)[..],
                            &model[*o as usize..*o as usize + *n]
                        );
                    }
                }
            }
            prop_assert_eq!(read(&*a, 0, MODEL_SIZE as usize), model.clone());
            // Extents: holes must read as zero.
            for e in extents(&*a, 0, MODEL_SIZE) {
                if e.flags & ZERO != 0 {
                    let s = &model[e.offset as usize..(e.offset + e.length) as usize];
                    prop_assert!(s.iter().all(|&b| b == 0));
                }
            }
        }
    }
}

fn configured(args: &[(&str, &str)]) -> Result<MemoryPlugin> {
    let mut p = MemoryPlugin::new();
    for (k, v) in args {
        p.config(k, v)?;
    }
    p.config_complete()?;
    p.get_ready()?;
    Ok(p)
}

#[test]
fn plugin_config() {
    let mut p = MemoryPlugin::new();
    assert_eq!(
        p.config_complete().unwrap_err().message(),
        "you must specify size=<SIZE> on the command line"
    );
    assert_eq!(
        p.config("foo", "1").unwrap_err().message(),
        "unknown parameter 'foo'"
    );
    assert!(p.config("allocator", "bogus").is_err());
    assert!(p.config("allocator", "sparse,mlock=true").is_err());
    assert!(p.config("allocator", "malloc,foo=1").is_err());
    assert!(p.config("size", "1Q").is_err());
    assert_eq!(
        AllocatorKind::parse("malloc,mlock=true").unwrap(),
        AllocatorKind::Malloc { mlock: true }
    );
    assert_eq!(p.magic_config_key(), Some("size"));
    assert!(p.dump_plugin().contains(&"mlock=yes".to_string()));
    assert!(p.callbacks().contains(&"pwrite"));
    // Two sizes are a mistake, not "the last one wins".
    assert!(configured(&[("size", "1M"), ("size", "2M")]).is_err());
}

#[test]
fn plugin_handles_share_storage_and_capabilities() {
    for (alloc, pref) in [("sparse", 32768), ("malloc", 512), ("zstd", 32768)] {
        let p = configured(&[("size", "16M"), ("allocator", alloc)]).unwrap();
        let h1 = p.open(false, "", false).unwrap();
        let h2 = p.open(true, "", false).unwrap();
        h1.pwrite(&[b'1'; 512], 0, false).unwrap();
        h1.pwrite(&[b'2'; 65536], 8 * 1024 * 1024 + 1, true)
            .unwrap();
        h1.pwrite(&[b'3'; 512], 16 * 1024 * 1024 - 512, false)
            .unwrap();
        let mut buf = vec![0; 65536];
        h2.pread(&mut buf, 8 * 1024 * 1024 + 1).unwrap();
        assert_eq!(buf, vec![b'2'; 65536]);
        h2.trim(65536, 8 * 1024 * 1024 + 1, false).unwrap();
        h1.pread(&mut buf, 8 * 1024 * 1024 + 1).unwrap();
        assert_eq!(buf, vec![0; 65536]);
        let bs = h1.block_size().unwrap().unwrap();
        assert_eq!(
            (bs.minimum, bs.preferred, bs.maximum),
            (1, pref, 0xffff_ffff)
        );
        assert_eq!(h1.can_fua().unwrap(), FuaMode::Native);
        assert_eq!(h1.can_zero().unwrap(), ZeroMode::Native);
        assert_eq!(h1.can_cache().unwrap(), CacheMode::Native);
        assert!(h1.can_fast_zero().unwrap() && h1.can_multi_conn().unwrap());
        assert!(h1.can_trim().unwrap() && h1.can_extents().unwrap());
        h1.flush().unwrap();
        h1.cache(10, 0).unwrap();
    }
}

#[test]
fn malloc_mlock_small() {
    // mlock may be refused by RLIMIT_MEMLOCK; either way it must not panic,
    // and a failure must be an error.
    match configured(&[("size", "10240"), ("allocator", "malloc,mlock=true")])
        .and_then(|p| p.after_fork().map(|()| p))
    {
        Ok(p) => {
            let h = p.open(false, "", false).unwrap();
            h.pwrite(&[5; 1024], 10240 - 1024, false).unwrap();
            let mut b = [0; 1024];
            h.pread(&mut b, 10240 - 1024).unwrap();
            assert_eq!(b, [5; 1024]);
        }
        Err(e) => assert!(e.message().starts_with("mlock")),
    }
}

#[test]
fn malloc_too_large_is_an_error() {
    assert!(Malloc::new(i64::MAX as u64, false).is_err());
}

#[test]
#[ignore]
fn bench_sparse_parallel() {
    let a: Arc<dyn Allocator> = Arc::new(Sparse::new());
    let start = std::time::Instant::now();
    thread::scope(|s| {
        for t in 0..16u64 {
            let a = a.clone();
            s.spawn(move || {
                let mut x = t.wrapping_mul(0x9e3779b97f4a7c15) | 1;
                let mut buf = vec![t as u8; 4096];
                for i in 0..200_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % (1 << 18)) * 4096;
                    if i % 2 == 0 {
                        a.write(&buf, off).unwrap();
                    } else {
                        a.read(&mut buf, off).unwrap();
                    }
                }
            });
        }
    });
    eprintln!("3.2M ops in {:?}", start.elapsed());
}
