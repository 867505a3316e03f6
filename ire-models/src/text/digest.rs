//! The SHA-256 digest behind tokenizer fingerprints and token-cache keys.

/// SHA-256 over length-prefixed fields, so that field boundaries are part of the digest.
pub(crate) struct Digest(sha2::Sha256);

impl Digest {
    pub(crate) fn new(domain: &str) -> Self {
        use sha2::Digest as _;
        let mut d = Digest(sha2::Sha256::new());
        d.bytes(domain.as_bytes());
        d
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        use sha2::Digest as _;
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    pub(crate) fn u64(&mut self, x: u64) {
        use sha2::Digest as _;
        self.0.update(x.to_le_bytes());
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        use sha2::Digest as _;
        self.0.finalize().into()
    }

    pub(crate) fn hex(self) -> String {
        hex(&self.finish())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
