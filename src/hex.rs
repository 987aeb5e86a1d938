//! Lower-case hex for digests in keys, variant ids and validators.

/// Appends `bytes` as lower-case hex.
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_become_two_lower_case_digits_each() {
        let mut out = String::from("k:");
        super::push(&mut out, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(out, "k:000fa5ff");
    }
}
