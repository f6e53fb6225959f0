//! `sync.key_file`: the shared secret every datagram is authenticated with.

use std::{os::unix::fs::PermissionsExt, path::Path};

use anyhow::{bail, Context, Result};

/// Bytes a key must have at least.
pub const MIN_KEY_LEN: usize = 16;

/// Reads the key: the file's content without surrounding whitespace, at least
/// `MIN_KEY_LEN` bytes, in a file only its owner may read or write (like ssh's keys).
pub fn load_key(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("sync.key_file {}: cannot read it", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "sync.key_file {}: mode {mode:04o} lets others read the key; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read(path)
        .with_context(|| format!("sync.key_file {}: cannot read it", path.display()))?;
    let key = text.trim_ascii().to_vec();
    if key.len() < MIN_KEY_LEN {
        bail!(
            "sync.key_file {}: the key has {} bytes, at least {MIN_KEY_LEN} are needed",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_readable_by_others_or_too_short_is_refused() {
        let dir = std::env::temp_dir().join(format!("bascule-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.key");
        std::fs::write(&path, "a shared secret of 32 bytes.....\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_key(&path).unwrap(),
            b"a shared secret of 32 bytes....."
        );
        std::fs::write(&path, "short\n").unwrap();
        let e = load_key(&path).unwrap_err().to_string();
        assert!(e.contains("5 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
