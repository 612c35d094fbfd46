//! What the fuzz targets share: cutting one input into the fields a target
//! needs.

/// The byte that separates fields in an input (never valid in UTF-8, so a
/// field's text cannot contain it).
pub const SEPARATOR: u8 = 0xff;

/// Up to `n` fields of `data`, cut at [`SEPARATOR`], each as text (invalid
/// UTF-8 replaced); missing fields are empty.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |&b| b == SEPARATOR)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}

/// The first byte of `data` as flags, and the rest.
pub fn flags(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}
