//! Unit tests of the file plugin (on temporary files and directories).

use super::*;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use tempfile::{tempdir, NamedTempFile};

fn plugin(args: &[(&str, &str)]) -> Result<FilePlugin> {
    let mut p = FilePlugin::new();
    for (k, v) in args {
        p.config(k, v)?;
    }
    p.config_complete()?;
    Ok(p)
}

fn temp_file(len: usize) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
    f.flush().unwrap();
    f
}

fn open_file(path: &Path, readonly: bool) -> Box<dyn Handle> {
    let p = plugin(&[("file", path.to_str().unwrap())]).unwrap();
    p.open(readonly, "", false).unwrap()
}

fn read(h: &dyn Handle, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xaau8; len];
    h.pread(&mut buf, offset).unwrap();
    buf
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn read_write_flush_trim_zero() {
    // nbdkit's test-file.sh.
    let f = temp_file(16384);
    let h = open_file(f.path(), false);
    assert_eq!(h.get_size().unwrap(), 16384);
    assert!(h.can_write().unwrap());
    for (i, b) in [b'1', b'2', b'1', b'2'].iter().enumerate() {
        h.pwrite(&[*b; 1024], 1024 + 1024 * i as u64, false)
            .unwrap();
    }
    let r = read(&*h, 0, 8192);
    assert_eq!(&r[..1024], &[0; 1024][..]);
    assert_eq!(&r[1024..2048], &[b'1'; 1024][..]);
    assert_eq!(&r[2048..3072], &[b'2'; 1024][..]);
    assert_eq!(&r[5120..], &[0; 3072][..]);
    assert!(h.can_flush().unwrap());
    h.flush().unwrap();
    assert!(h.can_trim().unwrap());
    h.trim(1024, 1024, false).unwrap();
    h.zero(4096, 1024, ZeroFlags::default())
        .unwrap_or_else(|e| {
            // No native method: the server would write zeroes.
            assert_eq!(e.errno(), Errno::EOPNOTSUPP);
            h.pwrite(&[0; 4096], 1024, false).unwrap();
        });
    assert_eq!(read(&*h, 0, 8192), vec![0; 8192]);
    // Reading past the end is an error.
    let mut buf = [0u8; 10];
    assert!(h.pread(&mut buf, 16380).is_err());
    h.cache(4096, 0).unwrap();
}

#[test]
fn sizes_are_exact() {
    for len in [0usize, 1, 511, 512, 513, 1 << 20] {
        let f = temp_file(len);
        assert_eq!(open_file(f.path(), true).get_size().unwrap(), len as u64);
    }
}

#[test]
fn trim_punches_a_hole() {
    let f = temp_file(1 << 20);
    let h = open_file(f.path(), false);
    h.pwrite(&vec![7u8; 1 << 20], 0, false).unwrap();
    h.flush().unwrap();
    h.trim(65536, 65536, false).unwrap();
    let fd = f.as_file().as_fd();
    let hole = lseek(fd, 0, Whence::SeekHole).unwrap();
    if hole == 1 << 20 {
        eprintln!("file system does not report punched holes; skipping");
    } else {
        assert_eq!(hole, 65536);
        assert_eq!(read(&*h, 65536, 65536), vec![0; 65536]);
    }
    assert_eq!(read(&*h, 0, 65536), vec![7; 65536]);
    assert_eq!(read(&*h, 131072, 65536), vec![7; 65536]);
    // Zero with may_trim punches too; without it uses ZERO_RANGE.
    for may_trim in [true, false] {
        let flags = ZeroFlags {
            may_trim,
            ..Default::default()
        };
        match h.zero(1000, 300_000, flags) {
            Ok(()) => assert_eq!(read(&*h, 300_000, 1000), vec![0; 1000]),
            Err(e) => assert_eq!(e.errno(), Errno::EOPNOTSUPP),
        }
    }
    assert_eq!(read(&*h, 301_000, 10), vec![7; 10]);
}

#[test]
fn extents_follow_seek_data_and_seek_hole() {
    let f = NamedTempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    f.as_file().write_all_at(&[1u8; 4096], 256 << 10).unwrap();
    f.as_file().write_all_at(&[2u8; 32768], 768 << 10).unwrap();
    f.as_file().sync_all().unwrap();
    let h = open_file(f.path(), true);
    assert!(h.can_extents().unwrap());
    let mut e = Extents::new(0, 1 << 20);
    h.extents(&mut e, false).unwrap();
    let list = e.list();
    // Contiguous cover of the window.
    assert_eq!(list[0].offset, 0);
    for w in list.windows(2) {
        assert_eq!(w[0].offset + w[0].length, w[1].offset);
        assert_ne!(w[0].flags, w[1].flags);
    }
    let last = list.last().unwrap();
    assert_eq!(last.offset + last.length, 1 << 20);
    // Holes read as zero; the written data is in data extents.
    for x in list {
        if x.flags == HOLE | ZERO {
            assert!(read(&*h, x.offset, x.length as usize)
                .iter()
                .all(|&b| b == 0));
        }
    }
    let flags_at = |o: u64| {
        list.iter()
            .find(|x| x.offset <= o && o < x.offset + x.length)
            .unwrap()
            .flags
    };
    assert_eq!(flags_at(256 << 10), 0);
    assert_eq!(flags_at(768 << 10), 0);
    // Compare with SEEK_DATA/SEEK_HOLE directly.
    let fd = f.as_file().as_fd();
    let first_data = lseek(fd, 0, Whence::SeekData).unwrap() as u64;
    if first_data > 0 {
        assert_eq!(list[0].flags, HOLE | ZERO);
        assert_eq!(list[0].length, first_data);
    }
    // req_one: a single extent starting at the window start.
    let mut e = Extents::new(100, 1 << 20);
    h.extents(&mut e, true).unwrap();
    assert_eq!(e.list().len(), 1);
    assert_eq!(e.list()[0].offset, 100);
}

#[test]
fn read_only_file_and_readonly_open() {
    let f = temp_file(4096);
    let h = open_file(f.path(), true);
    assert!(!h.can_write().unwrap());
    assert!(h.pwrite(&[1], 0, false).is_err());
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    let h = open_file(f.path(), false);
    if !is_root() {
        assert!(!h.can_write().unwrap());
    }
    assert_eq!(read(&*h, 0, 4096), vec![0; 4096]);
    h.flush().unwrap();
}

#[test]
fn config_errors() {
    let e = plugin(&[]).unwrap_err();
    assert_eq!(
        e.message(),
        "exactly one of file=, dir=, fd= or dirfd= must be given"
    );
    let f = temp_file(10);
    let d = tempdir().unwrap();
    let fname = f.path().to_str().unwrap();
    let dname = d.path().to_str().unwrap();
    assert!(plugin(&[("file", fname), ("dir", dname)]).is_err());
    let e = plugin(&[("file", "/nonexistent/x")]).unwrap_err();
    assert_eq!(
        e.message(),
        "realpath: /nonexistent/x: No such file or directory"
    );
    assert!(plugin(&[("dir", "/nonexistent-dir")]).is_err());
    assert!(plugin(&[("dir", fname)]).is_err());
    assert!(plugin(&[("fd", "1")]).is_err());
    assert!(plugin(&[("fd", "x")]).is_err());
    assert!(plugin(&[("file", fname), ("cache", "bogus")]).is_err());
    assert!(plugin(&[("file", fname), ("fadvise", "bogus")]).is_err());
    let mut p = FilePlugin::new();
    assert_eq!(
        p.config("foo", "1").unwrap_err().message(),
        "unknown parameter 'foo'"
    );
    assert!(p.config("rdelay", "1").is_err());
    assert_eq!(p.magic_config_key(), Some("file"));
    assert!(p.dump_plugin().contains(&"file_extents=yes".to_string()));
    // Relative paths are made absolute.
    // A directory is not a file.
    assert!(plugin(&[("file", dname)]).is_err());
    let p = plugin(&[
        ("file", fname),
        ("cache", "none"),
        ("fadvise", "sequential"),
    ])
    .unwrap();
    assert!(p.file.as_ref().unwrap().is_absolute());
    let h = p.open(false, "ignored", false).unwrap();
    h.pwrite(b"abc", 3, false).unwrap();
    assert_eq!(read(&*h, 2, 5), b"\0abc\0");
}

#[test]
fn fd_and_dirfd() {
    let f = temp_file(16384);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    let n = file.as_raw_fd().to_string();
    let p = plugin(&[("fd", &n)]).unwrap();
    let h = p.open(false, "", false).unwrap();
    assert_eq!(h.get_size().unwrap(), 16384);
    assert!(h.can_write().unwrap());
    h.pwrite(b"xyz", 100, false).unwrap();
    assert_eq!(read(&*h, 100, 3), b"xyz");
    drop(h);
    // A read-only descriptor gives a read-only export.
    let ro = File::open(f.path()).unwrap();
    let p = plugin(&[("fd", &ro.as_raw_fd().to_string())]).unwrap();
    assert!(!p.open(false, "", false).unwrap().can_write().unwrap());

    let d = tempdir().unwrap();
    std::fs::write(d.path().join("disk1"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(d.path().join("disk2"), vec![0u8; 16384]).unwrap();
    let dir = File::open(d.path()).unwrap();
    let p = plugin(&[("dirfd", &dir.as_raw_fd().to_string())]).unwrap();
    let mut names: Vec<_> = p
        .list_exports(false, false)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["disk1", "disk2"]);
    assert_eq!(
        p.open(true, "disk1", false).unwrap().get_size().unwrap(),
        1 << 20
    );
    assert_eq!(
        p.open(true, "disk2", false).unwrap().get_size().unwrap(),
        16384
    );
    // dirfd= needs a directory, fd= needs a file.
    assert!(plugin(&[("dirfd", &n)]).is_err());
    assert!(plugin(&[("fd", &dir.as_raw_fd().to_string())]).is_err());
}

#[test]
fn dir_mode() {
    let d = tempdir().unwrap();
    let path = d.path().to_str().unwrap();
    let p = plugin(&[("dir", path)]).unwrap();
    assert!(p.list_exports(false, false).unwrap().is_empty());
    for name in ["", "a", "..", "/"] {
        assert!(p.open(true, name, false).is_err(), "{name:?}");
    }
    std::fs::write(d.path().join("a"), b"1\n").unwrap();
    std::fs::write(d.path().join("b"), b"2\n").unwrap();
    symlink("b", d.path().join("c")).unwrap();
    nix::unistd::mkfifo(&d.path().join("d"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::create_dir(d.path().join("e")).unwrap();
    symlink("/dev/null", d.path().join("f")).unwrap();
    symlink(".", d.path().join("g")).unwrap();
    symlink("nonexistent", d.path().join("h")).unwrap();
    let list: Vec<String> = p
        .list_exports(false, false)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    // readdir order: the same order as read_dir gives.
    let readdir: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| ["a", "b", "c"].contains(&n.as_str()))
        .collect();
    assert_eq!(list, readdir);
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"]);
    assert_eq!(p.default_export(false, false).unwrap(), "");
    let e = p.open(true, "", false).err().unwrap();
    assert_eq!(e.errno(), Errno::ENOENT);
    assert_eq!(read(&*p.open(true, "a", false).unwrap(), 0, 1), b"1");
    assert_eq!(read(&*p.open(true, "c", false).unwrap(), 0, 1), b"2");
    for name in [
        "d",
        "e",
        "f",
        "g",
        "h",
        "./a",
        &format!("../{}/a", path),
        "x",
    ] {
        assert!(p.open(true, name, false).is_err(), "{name:?}");
    }
    let e = p.open(true, "./a", false).err().unwrap();
    assert_eq!(e.errno(), Errno::EINVAL);
}

#[test]
fn regular_files_have_no_block_size() {
    let f = temp_file(512);
    let h = open_file(f.path(), false);
    assert_eq!(h.block_size().unwrap(), None);
    assert_eq!(h.can_zero().unwrap(), ZeroMode::Native);
    assert!(h.can_fast_zero().unwrap());
    assert_eq!(h.can_cache().unwrap(), CacheMode::Native);
    let _ = h.is_rotational().unwrap();
}
