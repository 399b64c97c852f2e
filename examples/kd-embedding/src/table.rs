//! Reading a pretrained embedding table: safetensors (f32, f16, bf16) or NumPy `.npy` (`<f4`,
//! `<f8`, `<f2`), C order, two dimensions.

use std::path::Path;

/// A `[rows, cols]` table in row-major f32.
pub struct Table {
    /// Row count V.
    pub rows: usize,
    /// Row width d.
    pub cols: usize,
    /// The values, row-major.
    pub values: Vec<f32>,
}

/// Reads `path` by its extension: `.npy`, else safetensors (`tensor` names the tensor; by
/// default the first two-dimensional one, by name).
pub fn read(path: &Path, tensor: Option<&str>) -> Result<Table, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let table = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        if tensor.is_some() {
            return Err("--tensor applies to safetensors files; a .npy holds one array".into());
        }
        read_npy(&bytes)?
    } else {
        read_safetensors(&bytes, tensor)?
    };
    if table.rows < 2 || table.cols == 0 {
        return Err(format!(
            "the table is {} × {}; it needs at least 2 rows and 1 column",
            table.rows, table.cols
        ));
    }
    if let Some(i) = table.values.iter().position(|x| !x.is_finite()) {
        return Err(format!("entry {i} (row {}) is not finite", i / table.cols));
    }
    Ok(table)
}

/// Element types both formats may hold.
#[derive(Clone, Copy, Debug)]
enum Element {
    F32,
    F64,
    F16,
    Bf16,
}

impl Element {
    fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F64 => 8,
            Element::F16 | Element::Bf16 => 2,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Element::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Element::F64 => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
            Element::Bf16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            Element::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        }
    }
}

/// IEEE half precision to single.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let shift = frac.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | ((frac << shift) & 0x3ff) << 13
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

fn decode(data: &[u8], element: Element, rows: usize, cols: usize) -> Result<Table, String> {
    let n = rows
        .checked_mul(cols)
        .filter(|n| n.checked_mul(element.size()) == Some(data.len()))
        .ok_or_else(|| {
            format!(
                "{rows} × {cols} {element:?} values need {} bytes; the data has {}",
                rows.saturating_mul(cols).saturating_mul(element.size()),
                data.len()
            )
        })?;
    let values = data
        .chunks_exact(element.size())
        .map(|b| element.decode(b))
        .collect::<Vec<_>>();
    debug_assert_eq!(values.len(), n);
    Ok(Table { rows, cols, values })
}

fn read_safetensors(bytes: &[u8], name: Option<&str>) -> Result<Table, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (name, view) = match name {
        Some(n) => (n.to_string(), file.tensor(n).map_err(|e| e.to_string())?),
        None => {
            let mut tensors = file.tensors();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            tensors
                .into_iter()
                .find(|(_, t)| t.shape().len() == 2)
                .ok_or("no 2-D tensor in the file")?
        }
    };
    let element = match view.dtype() {
        safetensors::Dtype::F32 => Element::F32,
        safetensors::Dtype::F64 => Element::F64,
        safetensors::Dtype::F16 => Element::F16,
        safetensors::Dtype::BF16 => Element::Bf16,
        other => {
            return Err(format!(
                "{name} is {other:?}; f32, f64, f16 and bf16 are supported"
            ));
        }
    };
    let shape = view.shape();
    if shape.len() != 2 {
        return Err(format!(
            "{name} has shape {shape:?}; a table has two dimensions"
        ));
    }
    decode(view.data(), element, shape[0], shape[1])
}

/// NumPy's format: magic, version, a little-endian header length, a Python-literal dict header,
/// then the data.
fn read_npy(bytes: &[u8]) -> Result<Table, String> {
    let bad = |what: &str| format!("not a readable .npy file: {what}");
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("header runs past the end"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(&format!("no '{key}' in the header")))?;
        let rest = &header[at + key.len() + 2..];
        let rest = rest
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| bad(key))?;
        Ok(rest.trim_start())
    };
    let descr = field("descr")?;
    let element = if descr.starts_with("'<f4'") || descr.starts_with("'float32'") {
        Element::F32
    } else if descr.starts_with("'<f8'") {
        Element::F64
    } else if descr.starts_with("'<f2'") {
        Element::F16
    } else {
        return Err(format!(
            "element type {} is not supported (little-endian <f4, <f8, <f2 are)",
            descr.split(',').next().unwrap_or(descr)
        ));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err(
            "Fortran-ordered arrays are not supported: save with np.ascontiguousarray".into(),
        );
    }
    let shape = field("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("shape")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!(
            "the array has shape {dims:?}; a table has two dimensions"
        ));
    };
    decode(&bytes[start + len..], element, rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn npy_f32_and_f16_tables_read() {
        let values = [1.0f32, -2.5, 0.0, 3.25, 5.0, -0.125];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = read_npy(&npy("<f4", "(3, 2)", &data)).unwrap();
        assert_eq!((t.rows, t.cols), (3, 2));
        assert_eq!(t.values, values);
        // 1.0, -2.0, 0.5, 65504 (largest half), a subnormal 2^-24.
        let halves = [0x3c00u16, 0xc000, 0x3800, 0x7bff, 0x0001, 0x0000];
        let data: Vec<u8> = halves.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = read_npy(&npy("<f2", "(2, 3)", &data)).unwrap();
        assert_eq!(t.values, [1.0, -2.0, 0.5, 65504.0, 2f32.powi(-24), 0.0]);
    }

    #[test]
    fn bad_npy_is_an_error_not_a_panic() {
        let data = vec![0u8; 24];
        for (file, needle) in [
            (npy("<f4", "(3, 2)", &data[..20]), "need 24 bytes"),
            (npy("<i4", "(3, 2)", &data), "not supported"),
            (npy("<f4", "(6,)", &data), "two dimensions"),
            (npy("<f4", "(3, 2, 1)", &data), "two dimensions"),
            (b"\x93NUMPY\x01\x00\xff\xff".to_vec(), "past the end"),
            (b"PK\x03\x04".to_vec(), "magic"),
        ] {
            let err = read_npy(&file).err().expect("an error");
            assert!(err.contains(needle), "{err}");
        }
        let huge = npy("<f4", "(18446744073709551615, 2)", &data);
        assert!(read_npy(&huge).is_err());
    }
}
