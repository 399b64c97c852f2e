//! One rank's exchange state as bytes: what a checkpoint needs besides the model and optimizer
//! so that a resumed run reproduces the uninterrupted one.

use crate::DistError;

const MAGIC: &[u8; 4] = b"KDRS";
const VERSION: u32 = 2;

/// A rank's exchange state between two steps: the protocol it belongs to, the step count, the
/// position of its RNG stream (randomised codecs) and the protocol's state
/// ([`Reducer::state`](crate::Reducer::state): error-feedback residuals, PowerSGD's warm-start
/// matrices).
///
/// Made by [`DataParallel::checkpoint`](crate::DataParallel::checkpoint), restored by
/// [`DataParallel::restore`](crate::DataParallel::restore). [`to_bytes`](Self::to_bytes) writes
/// a little-endian format (`KDRS`, version 2, the protocol identity, steps, RNG position, then
/// each named buffer's name and f32 values); [`from_bytes`](Self::from_bytes) rejects anything
/// corrupt or truncated with an error, never a panic. Restoring into a trainer whose protocol
/// has another [`identity`](crate::Reducer::identity) (another codec, or the same codec with
/// other settings) is an error that names both.
#[derive(Debug, Clone, PartialEq)]
pub struct ReducerCheckpoint {
    /// The protocol and its configuration ([`Reducer::identity`](crate::Reducer::identity)).
    pub protocol: String,
    /// Steps taken.
    pub steps: u64,
    /// The rank's RNG word position.
    pub rng_position: u128,
    /// The protocol's named buffers.
    pub state: Vec<(String, Vec<f32>)>,
}

impl ReducerCheckpoint {
    /// The checkpoint as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let floats: usize = self.state.iter().map(|(k, v)| k.len() + 4 * v.len()).sum();
        let mut out = Vec::with_capacity(44 + self.protocol.len() + 16 * self.state.len() + floats);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.protocol.len() as u64).to_le_bytes());
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(&self.steps.to_le_bytes());
        out.extend_from_slice(&self.rng_position.to_le_bytes());
        out.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        for (name, values) in &self.state {
            out.extend_from_slice(&(name.len() as u64).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        out
    }

    /// Reads bytes written by [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DistError> {
        let mut r = Cursor { bytes, at: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(DistError::Checkpoint("not a reducer checkpoint".into()));
        }
        let version = u32::from_le_bytes(r.array("version")?);
        if version != VERSION {
            return Err(DistError::Checkpoint(format!(
                "version {version}, this build reads {VERSION}"
            )));
        }
        let len = r.length("protocol length", 1)?;
        let protocol = r.utf8(len, "protocol")?;
        let steps = u64::from_le_bytes(r.array("step count")?);
        let rng_position = u128::from_le_bytes(r.array("RNG position")?);
        let entries = r.length("buffer count", 8)?;
        let mut state = Vec::with_capacity(entries);
        for _ in 0..entries {
            let len = r.length("name length", 1)?;
            let name = r.utf8(len, "buffer name")?;
            let count = r.length("value count", 4)?;
            let values = r
                .take(4 * count, "values")?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            state.push((name, values));
        }
        if r.at != bytes.len() {
            return Err(DistError::Checkpoint(format!(
                "{} trailing bytes",
                bytes.len() - r.at
            )));
        }
        Ok(Self {
            protocol,
            steps,
            rng_position,
            state,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DistError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| DistError::Checkpoint(format!("truncated at the {what}")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn utf8(&mut self, n: usize, what: &str) -> Result<String, DistError> {
        std::str::from_utf8(self.take(n, what)?)
            .map(str::to_string)
            .map_err(|_| DistError::Checkpoint(format!("the {what} is not UTF-8")))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DistError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    /// A u64 count of items of `unit` bytes each, checked against the bytes that remain.
    fn length(&mut self, what: &str, unit: usize) -> Result<usize, DistError> {
        let n = u64::from_le_bytes(self.array(what)?);
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(unit as u64) > left {
            return Err(DistError::Checkpoint(format!(
                "{what} {n} exceeds the {left} bytes left"
            )));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReducerCheckpoint {
        ReducerCheckpoint {
            protocol: "qsgd: Qsgd { levels: 16 }".into(),
            steps: 12,
            rng_position: (1u128 << 70) + 5,
            state: vec![
                ("0.residual".into(), vec![1.5, -2.0, f32::MIN_POSITIVE]),
                ("1.q".into(), vec![]),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        assert_eq!(ReducerCheckpoint::from_bytes(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn every_truncation_and_a_bad_magic_are_errors() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            assert!(
                ReducerCheckpoint::from_bytes(&bytes[..n]).is_err(),
                "{n} bytes"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ReducerCheckpoint::from_bytes(&extra).is_err());
        // The protocol name starts after magic, version and its length: an invalid UTF-8 byte.
        let mut not_utf8 = bytes.clone();
        not_utf8[16] = 0xFF;
        assert!(matches!(
            ReducerCheckpoint::from_bytes(&not_utf8),
            Err(DistError::Checkpoint(m)) if m.contains("protocol is not UTF-8")
        ));
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(
            ReducerCheckpoint::from_bytes(&bad),
            Err(DistError::Checkpoint(_))
        ));
    }
}
