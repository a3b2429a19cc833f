//! Sizes as users write them in pipeline files: `"64MiB"`, `"512 KiB"`, `"1GiB"`, `"2 MB"`,
//! `"1000"` (bytes), as bytes.

/// Why a size does not parse; the text as written is kept for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{text:?} is not a size; write for example \"64MiB\", \"512KiB\" or \"1GiB\"")]
    NotASize { text: String },
    /// A unit that is none of B, KB, MB, GB, KiB, MiB, GiB (`unit` as read, trimmed).
    #[error("{text:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB (or KB, MB, GB)")]
    UnknownUnit { text: String, unit: String },
    /// Zero, negative, or past 1 TiB.
    #[error("{text:?} is out of range: give at least 1 byte and at most 1TiB")]
    OutOfRange { text: String },
}

impl From<SizeError> for String {
    fn from(e: SizeError) -> Self {
        e.to_string()
    }
}

/// Parses a size as written in pipeline files. Returns bytes.
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| SizeError::NotASize {
        text: text.to_string(),
    })?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text.to_string(),
                unit: unit.trim().to_string(),
            });
        }
    };
    let bytes = (n * scale).round();
    if !(1.0..=(1u64 << 40) as f64).contains(&bytes) {
        return Err(SizeError::OutOfRange {
            text: text.to_string(),
        });
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2 MB"), Ok(2_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(
            parse_size("5 furlongs"),
            Err(SizeError::UnknownUnit {
                text: "5 furlongs".into(),
                unit: "furlongs".into()
            })
        );
        assert!(matches!(parse_size("MiB"), Err(SizeError::NotASize { .. })));
        assert!(matches!(parse_size("0"), Err(SizeError::OutOfRange { .. })));
        assert!(matches!(
            parse_size("2TiB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("4096GiB"),
            Err(SizeError::OutOfRange { .. })
        ));
    }
}
