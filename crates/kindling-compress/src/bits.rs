//! Bit packing on the device. Fields of `width` bits are laid out as one little-endian bit
//! stream: field `i` occupies stream bits `i·width .. (i+1)·width`, least significant bit first,
//! and stream bit `j` is bit `j mod 8` of byte `j / 8`.
//!
//! Packing and unpacking are tensor ops, so only packed bytes cross between host and device:
//!
//! * **packing** multiplies groups of fields by powers of two and sums them with one small
//!   matmul in f32 (exact: 24 bits per word, `24/width` fields each) when `width` divides 24; other
//!   widths are split into bits and packed with integer shifts;
//! * **unpacking** uploads the bytes and gathers, for each byte, its `8/width` decoded values
//!   from a 256-row table (one gather) when `width` divides 8; other widths are unpacked with
//!   integer shifts and mapped through a `2^width`-entry table.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Bytes holding `count` fields of `width` bits: `⌈count·width / 8⌉`.
pub const fn packed_len(count: usize, width: u32) -> usize {
    (count * width as usize).div_ceil(8)
}

/// Packs `fields` (float values that are integers in `0 .. 2^width`, `1 ≤ width ≤ 16`).
pub(crate) fn pack_fields(fields: Tensor<1>, width: u32) -> Vec<u8> {
    debug_assert!((1..=16).contains(&width));
    let count = fields.dims()[0];
    if count == 0 {
        return Vec::new();
    }
    if 24 % width != 0 {
        return pack_int(fields.int(), width);
    }
    let device = fields.device();
    let per_word = (24 / width) as usize;
    let full = count / per_word;
    let weights: Vec<f32> = (0..per_word)
        .map(|j| (1u32 << (j as u32 * width)) as f32)
        .collect();
    // Padding by concatenation costs more than the whole packing on some backends, so the full
    // words are packed on the device and the last few fields (fewer than a word) on the host.
    let tail: Vec<f32> = if full * per_word < count {
        fields
            .clone()
            .slice(full * per_word..count)
            .into_data()
            .try_into_vec()
            .expect("tail")
    } else {
        Vec::new()
    };
    let mut packed: Vec<f32> = if full > 0 {
        let weights =
            Tensor::<2>::from_data(TensorData::new(weights.clone(), [per_word, 1]), &device);
        let head = if full * per_word == count {
            fields
        } else {
            fields.slice(0..full * per_word)
        };
        head.reshape([full, per_word])
            .matmul(weights)
            .into_data()
            .try_into_vec()
            .expect("packed words read back as f32")
    } else {
        Vec::new()
    };
    if !tail.is_empty() {
        packed.push(tail.iter().zip(&weights).map(|(f, w)| f * w).sum());
    }
    let mut out = Vec::with_capacity(3 * packed.len());
    for w in packed {
        out.extend_from_slice(&(w as u32).to_le_bytes()[..3]);
    }
    out.truncate(packed_len(count, width));
    out
}

/// Packs integer `values` (each in `0 .. 2^width`) with shifts: any width.
pub(crate) fn pack_int(values: Tensor<1, Int>, width: u32) -> Vec<u8> {
    let count = values.dims()[0];
    let len = packed_len(count, width);
    if count == 0 {
        return Vec::new();
    }
    let device = values.device();
    // Fields whose width divides 32 pack straight into words; others are split into bits first.
    let (stream, width) = if 32 % width == 0 {
        (values, width)
    } else {
        let shifts =
            Tensor::<1, Int>::arange(0..width as i64, &device).reshape([1, width as usize]);
        let bits = values
            .reshape([count, 1])
            .bitwise_right_shift(shifts)
            .bitwise_and_scalar(1);
        (bits.reshape([count * width as usize]), 1)
    };
    let per_word = (32 / width) as usize;
    let n = stream.dims()[0];
    let words = n.div_ceil(per_word);
    let padded = if words * per_word == n {
        stream
    } else {
        Tensor::cat(
            vec![stream, Tensor::zeros([words * per_word - n], &device)],
            0,
        )
    };
    let shifts =
        Tensor::<1, Int>::arange_step(0..32, width as usize, &device).reshape([1, per_word]);
    // Distinct bit ranges: the sum equals the bitwise OR. Only the top field can reach bit 31;
    // with 32-bit integers it wraps to a negative value, which `as u32` below undoes.
    let packed = padded
        .reshape([words, per_word])
        .bitwise_left_shift(shifts)
        .sum_dim(1)
        .reshape([words]);
    let words: Vec<i64> = packed
        .try_into_vec_as::<i64>()
        .expect("packed words read back");
    let mut out = Vec::with_capacity(words.len() * 4);
    for w in words {
        out.extend_from_slice(&(w as u32).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Unpacks `count` fields of `width` bits from `bytes` (at least [`packed_len`] long) and maps
/// each field `f` to `values[f]` (`values.len() == 2^width`), on `device`.
pub(crate) fn unpack_mapped(
    bytes: &[u8],
    count: usize,
    width: u32,
    values: &[f32],
    device: &Device,
) -> Tensor<1> {
    debug_assert_eq!(values.len(), 1 << width);
    debug_assert!(bytes.len() >= packed_len(count, width));
    if count == 0 {
        return Tensor::zeros([0], device);
    }
    let table_of = |rows: usize, cols: usize, entry: &dyn Fn(usize, usize) -> f32| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| entry(i / cols, i % cols))
            .collect();
        Tensor::<2>::from_data(TensorData::new(data, [rows, cols]), device)
    };
    if 8 % width == 0 {
        let per_byte = (8 / width) as usize;
        let mask = (1usize << width) - 1;
        let table = table_of(256, per_byte, &|b, j| {
            values[(b >> (j * width as usize)) & mask]
        });
        let used = packed_len(count, width);
        let index: Vec<i32> = bytes[..used].iter().map(|&b| b as i32).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [used]), device);
        return table
            .select(0, index)
            .reshape([used * per_byte])
            .slice(0..count);
    }
    let fields = unpack_int(bytes, count, width, device);
    let table = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
    table.select(0, fields)
}

/// Unpacks `count` integer fields of `width` bits with shifts, on `device`.
pub(crate) fn unpack_int(
    bytes: &[u8],
    count: usize,
    width: u32,
    device: &Device,
) -> Tensor<1, Int> {
    debug_assert!((1..=16).contains(&width));
    if count == 0 {
        return Tensor::zeros([0], device);
    }
    let field_width = if 32 % width == 0 { width } else { 1 };
    let per_word = (32 / field_width) as usize;
    let n = if field_width == width {
        count
    } else {
        count * width as usize
    };
    let words = n.div_ceil(per_word);
    let mut word_values = Vec::with_capacity(words);
    for i in 0..words {
        let mut b = [0u8; 4];
        for (j, slot) in b.iter_mut().enumerate() {
            *slot = bytes.get(4 * i + j).copied().unwrap_or(0);
        }
        word_values.push(u32::from_le_bytes(b) as i32);
    }
    let words_t = Tensor::<1, Int>::from_data(TensorData::new(word_values, [words]), device);
    let shifts =
        Tensor::<1, Int>::arange_step(0..32, field_width as usize, device).reshape([1, per_word]);
    let mask = (1i64 << field_width) - 1;
    let fields = words_t
        .reshape([words, 1])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(mask)
        .reshape([words * per_word])
        .slice(0..n);
    if field_width == width {
        fields
    } else {
        let weights =
            Tensor::<1, Int>::arange(0..width as i64, device).reshape([1, width as usize]);
        Tensor::<2, Int>::ones([1, width as usize], device)
            .bitwise_left_shift(weights)
            .mul(fields.reshape([count, width as usize]))
            .sum_dim(1)
            .reshape([count])
    }
}

/// The fields of a packed stream, one bit at a time (the definition the tests check against).
#[cfg(test)]
pub(crate) fn host_fields(
    bytes: &[u8],
    count: usize,
    width: u32,
) -> impl Iterator<Item = u32> + '_ {
    (0..count).map(move |i| {
        let start = i * width as usize;
        let mut v = 0u32;
        for b in 0..width as usize {
            let bit = start + b;
            v |= (((bytes[bit / 8] >> (bit % 8)) & 1) as u32) << b;
        }
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindling_testing::device;

    fn host_pack(values: &[u32], width: u32) -> Vec<u8> {
        let mut out = vec![0u8; packed_len(values.len(), width)];
        for (i, &v) in values.iter().enumerate() {
            for b in 0..width {
                if (v >> b) & 1 == 1 {
                    let bit = i * width as usize + b as usize;
                    out[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        out
    }

    #[test]
    fn every_width_matches_the_bit_stream_definition_both_ways() {
        let device = device();
        for width in 1..=16u32 {
            for count in [0usize, 1, 7, 23, 24, 25, 31, 32, 33, 100] {
                let values: Vec<u32> = (0..count)
                    .map(|i| ((i as u32).wrapping_mul(2654435761)) >> (32 - width))
                    .collect();
                let expected = host_pack(&values, width);
                let floats = Tensor::<1>::from_data(
                    TensorData::new(
                        values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                        [count],
                    ),
                    &device,
                );
                assert_eq!(
                    pack_fields(floats, width),
                    expected,
                    "float path, width {width}, count {count}"
                );
                let ints = Tensor::<1, Int>::from_data(
                    TensorData::new(
                        values.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                        [count],
                    ),
                    &device,
                );
                assert_eq!(
                    pack_int(ints, width),
                    expected,
                    "int path, width {width}, count {count}"
                );
                let back: Vec<i64> = unpack_int(&expected, count, width, &device)
                    .try_into_vec_as::<i64>()
                    .unwrap();
                assert_eq!(back, values.iter().map(|&v| v as i64).collect::<Vec<_>>());
                let host: Vec<u32> = host_fields(&expected, count, width).collect();
                assert_eq!(host, values);
                if width <= 12 {
                    let table: Vec<f32> =
                        (0..1u32 << width).map(|f| f as f32 * 0.5 - 3.0).collect();
                    let mapped: Vec<f32> = unpack_mapped(&expected, count, width, &table, &device)
                        .try_into_vec_as()
                        .unwrap();
                    let want: Vec<f32> = values.iter().map(|&v| table[v as usize]).collect();
                    assert_eq!(mapped, want, "mapped, width {width}, count {count}");
                }
            }
        }
    }

    #[test]
    fn top_bits_of_a_word_survive() {
        let device = device();
        let mut bits = vec![0i64; 32];
        bits[31] = 1;
        bits[0] = 1;
        let packed = pack_int(
            Tensor::from_data(TensorData::new(bits.clone(), [32]), &device),
            1,
        );
        assert_eq!(packed, vec![1, 0, 0, 0x80]);
        let floats = Tensor::<1>::from_data(
            TensorData::new(bits.iter().map(|&b| b as f32).collect::<Vec<_>>(), [32]),
            &device,
        );
        assert_eq!(pack_fields(floats, 1), vec![1, 0, 0, 0x80]);
    }
}
