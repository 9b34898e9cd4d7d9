//! The pair's shared secret and the challenge-response proofs built on it.
//!
//! One secret authenticates everything between tandem's own processes: the replication
//! handshake (standby and active prove themselves to each other), the supervisor's control
//! connections to its engines, and the supervisor's admin endpoint. Clients of the pair's data
//! never need it. By default it is a per-user file, created on first use with mode 0600 in a
//! directory of mode 0700 (as Erlang's cookie): `$TANDEM_SECRET_FILE` if set, otherwise
//! `$XDG_CONFIG_HOME/tandem/secret` or `~/.config/tandem/secret`. A file that others can read
//! is refused, as ssh refuses such a key.
//!
//! A proof is HMAC-SHA256 over a label (which service, which side) and both sides' nonces, so
//! a proof is good for one connection, one direction and one service only. The secret never
//! crosses a socket.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The environment variable that names the secret file.
pub const SECRET_FILE_ENV: &str = "TANDEM_SECRET_FILE";
/// Fewer bytes than this is not a secret.
pub const SECRET_BYTES_MIN: usize = 16;
pub const NONCE_BYTES: usize = 16;
pub const PROOF_BYTES: usize = 32;

pub type Nonce = [u8; NONCE_BYTES];
pub type Proof = [u8; PROOF_BYTES];

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secret file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret file {path} is readable by others (mode {mode:03o}): run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the secret file {path} holds {len} bytes; a secret needs {SECRET_BYTES_MIN} or more")]
    TooShort { path: PathBuf, len: usize },
    #[error("no secret file given and neither $HOME nor $XDG_CONFIG_HOME is set: pass --secret-file or set {SECRET_FILE_ENV}")]
    NoHome,
}

/// The shared secret. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from raw bytes (tests, and callers that keep secrets elsewhere).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret {
            bytes: bytes.into(),
        }
    }

    /// The file to use: `explicit` if given, else `$TANDEM_SECRET_FILE`, else the per-user
    /// default.
    pub fn path(explicit: Option<&Path>) -> Result<PathBuf, SecretError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(SECRET_FILE_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(std::env::var_os("HOME").ok_or(SecretError::NoHome)?).join(".config")
            }
        };
        Ok(config.join("tandem").join("secret"))
    }

    /// Finds the secret as [`Secret::path`] says, creating the file if it does not exist.
    pub fn resolve(explicit: Option<&Path>) -> Result<(PathBuf, Secret), SecretError> {
        let path = Secret::path(explicit)?;
        let secret = Secret::load_or_create(&path)?;
        Ok((path, secret))
    }

    /// Reads the secret in `path`; creates the file (0600, 32 random bytes as hex) and its
    /// directory (0700) if it does not exist. Two processes racing to create it agree on one.
    pub fn load_or_create(path: &Path) -> Result<Secret, SecretError> {
        match Secret::load(path) {
            Err(SecretError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Secret::create(path)?;
                Secret::load(path)
            }
            other => other,
        }
    }

    /// Reads an existing secret file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let read = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read(path).map_err(read)?;
        let bytes = text.trim_ascii().to_vec();
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Secret { bytes })
    }

    fn create(path: &Path) -> Result<(), SecretError> {
        let create = |source| SecretError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(create)?;
            }
        }
        let mut raw = [0u8; 32];
        fill_random(&mut raw);
        let mut text = hex(&raw);
        text.push('\n');
        // Written whole under a temporary name, then linked into place: a concurrent reader
        // never sees a half-written file, and a concurrent creator's file is never replaced.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(create)?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all());
        let linked = written.and_then(|_| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(create(e)),
        }
    }

    /// The proof of knowing the secret for `label` over `parts` (nonces, transcript).
    pub fn prove(&self, label: &str, parts: &[&[u8]]) -> Proof {
        self.mac(label, parts).finalize().into_bytes().into()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, label: &str, parts: &[&[u8]], proof: &[u8]) -> bool {
        self.mac(label, parts).verify_slice(proof).is_ok()
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes any key");
        mac.update(label.as_bytes());
        for part in parts {
            // Length-prefixed, so that no two different part lists hash alike.
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        mac
    }
}

/// A fresh random nonce.
pub fn nonce() -> Nonce {
    let mut n = [0u8; NONCE_BYTES];
    fill_random(&mut n);
    n
}

fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source is available");
}

/// Lower-case hex, for nonces and proofs in text protocols.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses lower- or upper-case hex of exactly `N` bytes.
pub fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_file_is_created_private_and_read_back_the_same() {
        let dir = temp_dir("create");
        let path = dir.join("sub").join("secret");
        let first = Secret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(Secret::load_or_create(&path).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_others_can_read_or_a_short_one_is_refused() {
        let dir = temp_dir("open");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secret::load(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Secret::load(&path),
            Err(SecretError::TooShort { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proofs_bind_the_label_the_parts_and_the_secret() {
        let s = Secret::from_bytes(*b"0123456789abcdef");
        let other = Secret::from_bytes(*b"fedcba9876543210");
        let p = s.prove("a", &[b"x", b"y"]);
        assert!(s.verify("a", &[b"x", b"y"], &p));
        assert!(!s.verify("b", &[b"x", b"y"], &p));
        assert!(!s.verify("a", &[b"xy"], &p));
        assert!(!s.verify("a", &[b"x", b"z"], &p));
        assert!(!other.verify("a", &[b"x", b"y"], &p));
        assert!(!s.verify("a", &[b"x", b"y"], &p[..31]));
    }

    #[test]
    fn hex_round_trips() {
        let n = nonce();
        assert_eq!(unhex::<NONCE_BYTES>(hex(&n).as_bytes()), Some(n));
        assert_eq!(unhex::<2>(b"zz00"), None);
        assert_eq!(unhex::<2>(b"00"), None);
    }
}
