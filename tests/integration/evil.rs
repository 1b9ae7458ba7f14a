//! The evil filter: corruption reproducible for a seed, stuck bits fixed on
//! the disk, stuck wires fixed within requests, and bad parameters.

use crate::cli::expect_error;
use crate::harness::*;

/// Read the first 256 KiB twice, and 4 KiB at 0 and at 1 MiB; print the
/// SHA-256 of each and the number of set bits in the first read.
const READS: &str = "import hashlib\n\
a = h.pread(262144, 0)\n\
b = h.pread(262144, 0)\n\
c = h.pread(4096, 0)\n\
d = h.pread(4096, 1048576)\n\
hx = lambda x: hashlib.sha256(x).hexdigest()[:16]\n\
print(hx(a), hx(b), hx(c), hx(d), sum(bin(x).count('1') for x in a))\n";

fn reads(args: &[&str]) -> Vec<String> {
    let mut full = vec!["--filter=evil", "memory", "2M"];
    full.extend_from_slice(args);
    let s = Server::start(&full);
    python(&s.uri(), READS, &[])
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn evil_stuck_bits_are_fixed_on_the_disk_and_follow_the_seed() {
    let a = reads(&["evil-probability=1e-3", "evil-seed=1"]);
    // The same place reads the same twice; the corruption is seeded.
    assert_eq!(a[0], a[1]);
    assert_eq!(reads(&["evil-probability=1e-3", "evil-seed=1"]), a);
    assert_ne!(reads(&["evil-probability=1e-3", "evil-seed=2"])[0], a[0]);
    // 2 Mbit * 1e-3 stuck, half of them high on a zero disk: about 1000.
    let ones: u32 = a[4].parse().unwrap();
    assert!((500..1600).contains(&ones), "{a:?}");
    // Different places of the disk have different stuck bits.
    assert_ne!(a[2], a[3]);
}

#[test]
fn evil_stuck_wires_repeat_in_every_request() {
    let a = reads(&["evil=stuck-wires", "evil-probability=1e-3", "evil-seed=3"]);
    assert_eq!(a[0], a[1]);
    // The same positions within each 4 KiB request, wherever it reads.
    assert_eq!(a[2], a[3]);
    assert_ne!(a[4], "0");
}

#[test]
fn evil_cosmic_rays_differ_per_read_but_repeat_per_seed() {
    let args = ["evil=cosmic-rays", "evil-probability=1e-3", "evil-seed=9"];
    let a = reads(&args);
    assert_ne!(a[0], a[1]);
    assert_eq!(reads(&args), a);
    // Probability 0: the data is untouched (zeroes).
    let z = reads(&["evil=cosmic-rays", "evil-probability=0"]);
    assert_eq!(z[4], "0");
}

#[test]
fn evil_bad_parameters_are_startup_errors() {
    for bad in [
        "evil=gamma-rays",
        "evil-probability=2",
        "evil-probability=often",
        "evil-stuck-probability=-1",
        "evil-seed=abc",
    ] {
        let e = expect_error(&["--filter=evil", "memory", "1M", bad], true);
        assert!(e.contains("evil"), "{bad}: {e}");
    }
}
