use super::*;

fn plugin(params: &[(&str, &str)]) -> SparseRandomPlugin {
    let mut p = SparseRandomPlugin::new();
    for (k, v) in params {
        p.config(k, v).unwrap();
    }
    p.config_complete().unwrap();
    p
}

fn handle(params: &[(&str, &str)]) -> Box<dyn Handle> {
    plugin(params).open(false, "", false).unwrap()
}

fn all_extents(h: &dyn Handle, size: u64) -> Vec<crate::extents::Extent> {
    let mut e = Extents::new(0, size);
    h.extents(&mut e, false).unwrap();
    e.into_vec()
}

#[test]
fn percent_parsing() {
    assert_eq!(parse_percent("10").unwrap(), 10.0);
    assert_eq!(parse_percent("12.5%").unwrap(), 12.5);
    assert_eq!(parse_percent("0").unwrap(), 0.0);
    assert_eq!(parse_percent("100").unwrap(), 100.0);
    for bad in ["", "-1", "101", "x", "10x", "1e3", "%"] {
        assert!(parse_percent(bad).is_err(), "{bad}");
    }
}

#[test]
fn bad_parameters() {
    let mut p = SparseRandomPlugin::new();
    assert!(p.config("runlength", "0").is_err());
    assert!(p.config("runlength", "x").is_err());
    assert!(p.config("random-content", "maybe").is_err());
    assert!(p.config("seed", "-3").is_err());
    assert!(p.config("colour", "red").is_err());
    p.config("seed", "1").unwrap();
    assert!(p.config("seed", "1").is_err());
    assert!(SparseRandomPlugin::new().config_complete().is_err());
}

#[test]
fn zero_and_hundred_percent() {
    let size = 1 << 20;
    let h = handle(&[("size", "1M"), ("percent", "0")]);
    assert_eq!(all_extents(&*h, size).len(), 1);
    assert_eq!(all_extents(&*h, size)[0].flags, HOLE | ZERO);
    let mut buf = vec![1u8; 8192];
    h.pread(&mut buf, 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let h = handle(&[("size", "1M"), ("percent", "100")]);
    let e = all_extents(&*h, size);
    assert_eq!((e.len(), e[0].flags, e[0].length), (1, 0, size));
    h.pread(&mut buf, 4096).unwrap();
    assert!(buf.iter().all(|&b| b != 0));
    // Each block is one repeated byte.
    assert!(buf[..4096].iter().all(|&b| b == buf[0]));
}

#[test]
fn roughly_the_percentage_asked_for() {
    let p = plugin(&[("size", "4G"), ("seed", "7"), ("runlength", "1M")]);
    let map = p.map.as_ref().unwrap();
    let pct = 100.0 * map.data_blocks() as f64 / map.blocks as f64;
    assert!((5.0..15.0).contains(&pct), "{pct}% data");
}

#[test]
fn same_seed_same_disk_and_reads_agree_at_any_alignment() {
    let params = [
        ("size", "64M"),
        ("seed", "99"),
        ("runlength", "64K"),
        ("percent", "50"),
    ];
    let h1 = handle(&params);
    let h2 = handle(&params);
    let mut a = vec![0u8; 3 << 20];
    let mut b = vec![0u8; 3 << 20];
    h1.pread(&mut a, 1 << 20).unwrap();
    h2.pread(&mut b, 1 << 20).unwrap();
    assert_eq!(a, b);
    // An unaligned read returns the same bytes as the aligned one.
    let mut c = vec![0u8; 10000];
    h1.pread(&mut c, (1 << 20) + 4000).unwrap();
    assert_eq!(&c[..], &a[4000..14000]);
    let other = handle(&[
        ("size", "64M"),
        ("seed", "100"),
        ("runlength", "64K"),
        ("percent", "50"),
    ]);
    other.pread(&mut b, 1 << 20).unwrap();
    assert_ne!(a, b);
}

#[test]
fn random_content_blocks_vary_and_agree() {
    let params = [
        ("size", "1M"),
        ("percent", "100"),
        ("random-content", "true"),
        ("seed", "5"),
    ];
    let h = handle(&params);
    let mut a = vec![0u8; 8192];
    h.pread(&mut a, 0).unwrap();
    assert!(a[..4096].iter().any(|&x| x != a[0]));
    let mut c = vec![0u8; 100];
    h.pread(&mut c, 4000).unwrap();
    assert_eq!(&c[..], &a[4000..4100]);
}

#[test]
fn extents_match_reads_and_writes_check() {
    let size = 16u64 << 20;
    let params = [
        ("size", "16M"),
        ("seed", "3"),
        ("runlength", "128K"),
        ("percent", "30"),
    ];
    let h = handle(&params);
    let ext = all_extents(&*h, size);
    assert!(ext.len() > 2, "{ext:?}");
    let mut pos = 0;
    for e in &ext {
        assert_eq!(e.offset, pos);
        pos += e.length;
        let mut buf = vec![0u8; e.length as usize];
        h.pread(&mut buf, e.offset).unwrap();
        let zero = buf.iter().all(|&b| b == 0);
        assert_eq!(zero, e.flags == HOLE | ZERO, "{e:?}");
        // Writing back what was read succeeds; anything else fails.
        h.pwrite(&buf, e.offset, false).unwrap();
        buf[0] ^= 0x80;
        assert_eq!(
            h.pwrite(&buf, e.offset, false).unwrap_err().errno(),
            Errno::EIO
        );
        if zero {
            h.trim(e.length, e.offset, false).unwrap();
            h.zero(e.length, e.offset, ZeroFlags::default()).unwrap();
        } else {
            assert!(h.trim(1, e.offset + e.length - 1, false).is_err());
        }
    }
    assert_eq!(pos, size);
    // A window that starts inside a run.
    let mut e = Extents::new(ext[1].offset + 100, size);
    h.extents(&mut e, true).unwrap();
    assert_eq!(e.list()[0].offset, ext[1].offset + 100);
    assert_eq!(e.list()[0].length, ext[1].length - 100);
}

#[test]
fn odd_size_last_block() {
    let h = handle(&[("size", "10000"), ("percent", "100"), ("seed", "1")]);
    let ext = all_extents(&*h, 10000);
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].length, 10000);
    let mut buf = vec![0u8; 1808];
    h.pread(&mut buf, 8192).unwrap();
    assert!(buf.iter().all(|&b| b != 0));
}
