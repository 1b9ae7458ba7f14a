//! Private temporary files for filters that keep data on disk (`cow`,
//! `cache`): created in `$TMPDIR` (default `/var/tmp`, as nbdkit, because
//! `/tmp` is often a small tmpfs) and unlinked at once, so nothing is left
//! behind however the server exits.  The file is sparse: only what is
//! written takes space.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::PathBuf;

/// The directory temporary files go in.
pub fn tmpdir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/tmp"),
    }
}

/// A new, empty, already unlinked file named `PREFIXXXXXXX` in [`tmpdir`],
/// `len` bytes long (a hole).
pub fn create(prefix: &str, len: u64) -> Result<File> {
    let template = tmpdir().join(format!("{prefix}XXXXXX"));
    let (fd, path) = nix::unistd::mkstemp(&template)
        .map_err(|e| Error::os(e, format!("mkstemp: {}", template.display())))?;
    let file = File::from(fd);
    std::fs::remove_file(&path).map_err(|e| Error::io(e, format!("unlink: {}", path.display())))?;
    file.set_len(len)
        .map_err(|e| Error::io(e, "ftruncate: temporary file"))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn created_unlinked_and_sized() {
        let f = create("nbdkit-test", 1 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        assert_eq!(f.metadata().unwrap().nlink(), 0);
        f.write_all_at(b"abc", 4096).unwrap();
        let mut b = [1u8; 5];
        f.read_exact_at(&mut b, 4094).unwrap();
        assert_eq!(&b, &[0, 0, b'a', b'b', b'c']);
    }
}
