//! Numbers with a unit letter, as flags and listener options take them
//! (`250M`, `1.5G`, `1M`): one reader for every such value; each caller
//! says which letters it takes and what they multiply by, and checks the
//! range itself.

/// Thousands: `k`, `m`, `g` (pixel rates).
pub const DECIMAL: &[(char, f64)] = &[('k', 1e3), ('m', 1e6), ('g', 1e9)];

/// Powers of 1024: `k`, `m`, `g` (byte rates).
pub const BINARY: &[(char, f64)] = &[
    ('k', (1u64 << 10) as f64),
    ('m', (1u64 << 20) as f64),
    ('g', (1u64 << 30) as f64),
];

/// Powers of 1024 up to `t` (memory sizes).
pub const BINARY_T: &[(char, f64)] = &[
    ('k', (1u64 << 10) as f64),
    ('m', (1u64 << 20) as f64),
    ('g', (1u64 << 30) as f64),
    ('t', (1u64 << 40) as f64),
];

/// `v` as a decimal number, times the multiplier of its last letter when
/// that is one of `units` (either case); `None` when it is not a number.
pub fn scaled(v: &str, units: &[(char, f64)]) -> Option<f64> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, c)) => match units.iter().find(|(u, _)| *u == c.to_ascii_lowercase()) {
            Some(&(_, m)) => (&v[..i], m),
            None => (v, 1.0),
        },
        None => (v, 1.0),
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callers_letters_multiply() {
        assert_eq!(scaled("1.5G", DECIMAL), Some(1.5e9));
        assert_eq!(scaled("2k", BINARY), Some(2048.0));
        assert_eq!(scaled("1T", BINARY_T), Some((1u64 << 40) as f64));
        assert_eq!(scaled("1T", BINARY), None);
        assert_eq!(scaled("42", DECIMAL), Some(42.0));
        assert_eq!(scaled("", DECIMAL), None);
        assert_eq!(scaled("M", DECIMAL), None);
    }
}
