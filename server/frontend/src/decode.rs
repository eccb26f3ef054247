//! Wire -> tensors: the one place the native side converts request data (it mirrors
//! `protos/codec.py`). Every problem is an INVALID_ARGUMENT naming the tensor.

use crate::errors::{short, Refusal};
use crate::pb::{model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest};

/// A tensor larger than this many elements is refused before any allocation.
pub const MAX_ELEMENTS: u64 = 1 << 31;
pub const MAX_RANK: usize = 16;

/// The protocol's datatypes (BF16 is known but not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl Dtype {
    pub const ALL: [Dtype; 13] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F16,
        Dtype::F32,
        Dtype::F64,
        Dtype::Bytes,
    ];

    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "UINT8",
            Dtype::U16 => "UINT16",
            Dtype::U32 => "UINT32",
            Dtype::U64 => "UINT64",
            Dtype::I8 => "INT8",
            Dtype::I16 => "INT16",
            Dtype::I32 => "INT32",
            Dtype::I64 => "INT64",
            Dtype::F16 => "FP16",
            Dtype::F32 => "FP32",
            Dtype::F64 => "FP64",
            Dtype::Bytes => "BYTES",
        }
    }

    /// Bytes per element (0 for BYTES, whose elements vary).
    pub fn itemsize(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
            Dtype::Bytes => 0,
        }
    }

    /// The typed `contents` field that carries this datatype (FP16 has none).
    fn contents_field(self) -> Option<&'static str> {
        Some(match self {
            Dtype::Bool => "bool_contents",
            Dtype::U8 | Dtype::U16 | Dtype::U32 => "uint_contents",
            Dtype::U64 => "uint64_contents",
            Dtype::I8 | Dtype::I16 | Dtype::I32 => "int_contents",
            Dtype::I64 => "int64_contents",
            Dtype::F32 => "fp32_contents",
            Dtype::F64 => "fp64_contents",
            Dtype::Bytes => "bytes_contents",
            Dtype::F16 => return None,
        })
    }
}

/// Element data: little-endian bytes for numbers, the elements for BYTES.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Raw(Vec<u8>),
    Bytes(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub data: Data,
}

fn invalid(message: String) -> Refusal {
    Refusal::invalid(message)
}

/// Element count of a shape, refusing negative, too many or too large dimensions.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, Refusal> {
    if shape.len() > MAX_RANK {
        return Err(invalid(format!(
            "input '{}': {} dimensions, at most {MAX_RANK} allowed",
            short(name),
            shape.len()
        )));
    }
    let mut count: u64 = 1;
    // numpy refuses a shape whose non-zero dims multiply past its limits even when
    // another dim is 0, so those are bounded too.
    let mut nonzero: u64 = 1;
    for &dim in shape {
        if dim < 0 {
            return Err(invalid(format!(
                "input '{}': negative dimension {dim} in shape {shape:?}",
                short(name)
            )));
        }
        count = count.saturating_mul(dim as u64);
        nonzero = nonzero.saturating_mul((dim as u64).max(1));
        if count > MAX_ELEMENTS || nonzero > MAX_ELEMENTS {
            return Err(invalid(format!(
                "input '{}': shape {shape:?} is too large",
                short(name)
            )));
        }
    }
    Ok(count as usize)
}

/// Split a length-prefixed BYTES buffer into `count` elements.
pub fn split_bytes(name: &str, buffer: &[u8], count: usize) -> Result<Vec<Vec<u8>>, Refusal> {
    let mut items = Vec::with_capacity(count.min(buffer.len() / 4 + 1));
    let mut offset = 0usize;
    for _ in 0..count {
        let Some(prefix) = buffer.get(offset..offset + 4) else {
            return Err(invalid(format!(
                "input '{}': BYTES data holds fewer than the {count} elements its shape needs",
                short(name)
            )));
        };
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        offset += 4;
        let Some(item) = buffer.get(offset..offset + length) else {
            return Err(invalid(format!(
                "input '{}': BYTES element length prefix {length} runs past the end of the data",
                short(name)
            )));
        };
        items.push(item.to_vec());
        offset += length;
    }
    if offset != buffer.len() {
        return Err(invalid(format!(
            "input '{}': {} bytes left over after the {count} BYTES elements",
            short(name),
            buffer.len() - offset
        )));
    }
    Ok(items)
}

/// One tensor from its raw bytes (taken, not copied) or its typed contents.
pub fn decode_tensor(tensor: &InferInputTensor, raw: Option<Vec<u8>>) -> Result<Tensor, Refusal> {
    let name = tensor.name.as_str();
    if tensor.datatype == "BF16" {
        return Err(invalid(format!(
            "input '{}': datatype BF16 is not supported by Kairos",
            short(name)
        )));
    }
    let Some(dtype) = Dtype::parse(&tensor.datatype) else {
        return Err(invalid(format!(
            "input '{}': unknown datatype '{}'",
            short(name),
            short(&tensor.datatype)
        )));
    };
    let count = element_count(name, &tensor.shape)?;
    let data = match raw {
        Some(raw) => from_raw(name, dtype, &tensor.shape, count, raw)?,
        None => match &tensor.contents {
            Some(contents) => from_contents(name, dtype, &tensor.shape, count, contents)?,
            None => {
                return Err(invalid(format!(
                    "input '{}': no data (neither raw_input_contents nor contents)",
                    short(name)
                )))
            }
        },
    };
    Ok(Tensor {
        name: tensor.name.clone(),
        dtype,
        shape: tensor.shape.clone(),
        data,
    })
}

fn from_raw(
    name: &str,
    dtype: Dtype,
    shape: &[i64],
    count: usize,
    raw: Vec<u8>,
) -> Result<Data, Refusal> {
    if dtype == Dtype::Bytes {
        return Ok(Data::Bytes(split_bytes(name, &raw, count)?));
    }
    let expected = count * dtype.itemsize();
    if raw.len() != expected {
        return Err(invalid(format!(
            "input '{}': {} bytes of data, but shape {shape:?} of {} needs {expected}",
            short(name),
            raw.len(),
            dtype.name()
        )));
    }
    if dtype == Dtype::Bool && raw.iter().any(|&b| b > 1) {
        return Err(invalid(format!(
            "input '{}': BOOL raw data must hold bytes 0 or 1",
            short(name)
        )));
    }
    Ok(Data::Raw(raw))
}

fn from_contents(
    name: &str,
    dtype: Dtype,
    shape: &[i64],
    count: usize,
    contents: &InferTensorContents,
) -> Result<Data, Refusal> {
    let Some(field) = dtype.contents_field() else {
        return Err(invalid(format!(
            "input '{}': {} data must be sent as raw_input_contents",
            short(name),
            dtype.name()
        )));
    };
    let length = match dtype {
        Dtype::Bool => contents.bool_contents.len(),
        Dtype::U8 | Dtype::U16 | Dtype::U32 => contents.uint_contents.len(),
        Dtype::U64 => contents.uint64_contents.len(),
        Dtype::I8 | Dtype::I16 | Dtype::I32 => contents.int_contents.len(),
        Dtype::I64 => contents.int64_contents.len(),
        Dtype::F32 => contents.fp32_contents.len(),
        Dtype::F64 => contents.fp64_contents.len(),
        Dtype::Bytes => contents.bytes_contents.len(),
        Dtype::F16 => 0,
    };
    if length != count {
        return Err(invalid(format!(
            "input '{}': {length} values in contents.{field}, but shape {shape:?} needs {count}",
            short(name)
        )));
    }
    let out_of_range = || {
        invalid(format!(
            "input '{}': a value in contents does not fit {}",
            short(name),
            dtype.name()
        ))
    };
    let mut raw = Vec::with_capacity(count * dtype.itemsize());
    match dtype {
        Dtype::Bool => raw.extend(contents.bool_contents.iter().map(|&b| b as u8)),
        Dtype::U8 => {
            for &v in &contents.uint_contents {
                raw.push(u8::try_from(v).map_err(|_| out_of_range())?);
            }
        }
        Dtype::U16 => {
            for &v in &contents.uint_contents {
                let v = u16::try_from(v).map_err(|_| out_of_range())?;
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::U32 => contents
            .uint_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::U64 => contents
            .uint64_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::I8 => {
            for &v in &contents.int_contents {
                let v = i8::try_from(v).map_err(|_| out_of_range())?;
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::I16 => {
            for &v in &contents.int_contents {
                let v = i16::try_from(v).map_err(|_| out_of_range())?;
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::I32 => contents
            .int_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::I64 => contents
            .int64_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::F32 => contents
            .fp32_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::F64 => contents
            .fp64_contents
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Dtype::Bytes => return Ok(Data::Bytes(contents.bytes_contents.clone())),
        Dtype::F16 => unreachable_f16()?,
    }
    Ok(Data::Raw(raw))
}

fn unreachable_f16() -> Result<(), Refusal> {
    Err(Refusal::internal("FP16 has no contents field".to_string()))
}

fn has_contents(tensor: &InferInputTensor) -> bool {
    tensor
        .contents
        .as_ref()
        .is_some_and(|c| prost::Message::encoded_len(c) > 0)
}

/// Every input tensor of a request, in request order; takes the raw contents out of it.
pub fn decode_inputs(request: &mut ModelInferRequest) -> Result<Vec<Tensor>, Refusal> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(invalid(format!(
            "{} raw_input_contents for {} inputs: there must be exactly one per input",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut tensors: Vec<Tensor> = Vec::with_capacity(request.inputs.len());
    for (index, tensor) in request.inputs.iter().enumerate() {
        if tensor.name.is_empty() {
            return Err(invalid(format!("input #{index} has no name")));
        }
        if tensors.iter().any(|t| t.name == tensor.name) {
            return Err(invalid(format!(
                "input '{}' is given twice",
                short(&tensor.name)
            )));
        }
        let bytes = raw.next();
        if bytes.is_some() && has_contents(tensor) {
            return Err(invalid(format!(
                "input '{}': both raw_input_contents and contents were given",
                short(&tensor.name)
            )));
        }
        tensors.push(decode_tensor(tensor, bytes)?);
    }
    Ok(tensors)
}

/// Length-prefixed BYTES framing, for encoding outputs (the inverse of `split_bytes`).
pub fn join_bytes<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::model_infer_request::InferInputTensor;
    use proptest::prelude::*;

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn every_numeric_datatype_decodes_from_raw_bytes() {
        for dtype in Dtype::ALL {
            if dtype == Dtype::Bytes {
                continue;
            }
            let raw: Vec<u8> = (0..6 * dtype.itemsize()).map(|i| (i % 2) as u8).collect();
            let t = decode_tensor(&tensor("x", dtype.name(), &[2, 3]), Some(raw.clone()))
                .unwrap_or_else(|e| panic!("{}: {}", dtype.name(), e.message));
            assert_eq!(t.dtype, dtype);
            assert_eq!(t.shape, vec![2, 3]);
            assert_eq!(t.data, Data::Raw(raw));
        }
    }

    #[test]
    fn raw_size_must_match_the_shape() {
        let err = decode_tensor(&tensor("x", "FP32", &[2, 3]), Some(vec![0; 20])).unwrap_err();
        assert_eq!(err.code, tonic::Code::InvalidArgument);
        assert!(err.message.contains("20 bytes of data"), "{}", err.message);
        assert!(err.message.contains("needs 24"), "{}", err.message);
    }

    #[test]
    fn bool_raw_bytes_other_than_0_and_1_are_refused() {
        let err = decode_tensor(&tensor("b", "BOOL", &[2]), Some(vec![0, 2])).unwrap_err();
        assert!(err.message.contains("bytes 0 or 1"));
    }

    #[test]
    fn typed_contents_decode_to_little_endian_bytes() {
        let mut t = tensor("x", "INT16", &[3]);
        t.contents = Some(InferTensorContents {
            int_contents: vec![-1, 2, 300],
            ..Default::default()
        });
        let decoded = decode_tensor(&t, None).unwrap_or_else(|e| panic!("{}", e.message));
        let expected: Vec<u8> = [-1i16, 2, 300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(decoded.data, Data::Raw(expected));
    }

    #[test]
    fn narrow_integer_contents_are_range_checked() {
        let mut t = tensor("x", "UINT8", &[1]);
        t.contents = Some(InferTensorContents {
            uint_contents: vec![256],
            ..Default::default()
        });
        let err = decode_tensor(&t, None).unwrap_err();
        assert!(
            err.message.contains("does not fit UINT8"),
            "{}",
            err.message
        );
    }

    #[test]
    fn fp16_has_no_contents_field() {
        let mut t = tensor("h", "FP16", &[1]);
        t.contents = Some(InferTensorContents::default());
        let err = decode_tensor(&t, None).unwrap_err();
        assert!(
            err.message.contains("raw_input_contents"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bytes_framing_round_trips_and_rejects_short_or_long_data() {
        let items: Vec<&[u8]> = vec![b"ab", b"", "é".as_bytes()];
        let framed = join_bytes(items.iter().copied());
        assert_eq!(
            split_bytes("s", &framed, 3).unwrap_or_default(),
            items.iter().map(|i| i.to_vec()).collect::<Vec<_>>()
        );
        assert!(split_bytes("s", &framed, 4).is_err());
        assert!(split_bytes("s", &framed, 2).is_err());
        let mut bad = framed.clone();
        bad[0] = 200;
        assert!(split_bytes("s", &bad, 3).is_err());
    }

    #[test]
    fn bf16_unknown_datatypes_and_bad_shapes_are_refused_with_short_messages() {
        assert!(decode_tensor(&tensor("x", "BF16", &[1]), Some(vec![0, 0]))
            .unwrap_err()
            .message
            .contains("BF16 is not supported"));
        let long = "Q".repeat(10_000);
        let err = decode_tensor(&tensor("x", &long, &[1]), Some(vec![0])).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message.len());
        assert!(decode_tensor(&tensor("x", "FP32", &[-1]), Some(vec![])).is_err());
        assert!(decode_tensor(&tensor("x", "FP32", &[1 << 40, 1 << 40]), None).is_err());
        assert!(decode_tensor(&tensor("x", "FP32", &[1; 17]), Some(vec![0; 4])).is_err());
        // Zero elements, but numpy would refuse the shape: refused here, not in Python.
        assert!(decode_tensor(&tensor("x", "FP32", &[0, 1 << 31, 1 << 31]), Some(vec![])).is_err());
    }

    #[test]
    fn requests_need_one_raw_buffer_per_input_and_unique_names() {
        let mut request = ModelInferRequest {
            inputs: vec![tensor("a", "UINT8", &[1]), tensor("b", "UINT8", &[1])],
            raw_input_contents: vec![vec![1]],
            ..Default::default()
        };
        assert!(decode_inputs(&mut request).is_err());
        let mut twice = ModelInferRequest {
            inputs: vec![tensor("a", "UINT8", &[1]), tensor("a", "UINT8", &[1])],
            raw_input_contents: vec![vec![1], vec![2]],
            ..Default::default()
        };
        let err = decode_inputs(&mut twice).unwrap_err();
        assert!(err.message.contains("given twice"));
    }

    proptest! {
        #[test]
        fn any_raw_tensor_of_the_right_size_decodes_to_its_bytes(
            dims in proptest::collection::vec(0i64..5, 0..4),
            index in 0usize..12,
            seed in any::<u8>(),
        ) {
            let dtype = Dtype::ALL[index];
            let count: i64 = dims.iter().product();
            let raw: Vec<u8> = (0..count as usize * dtype.itemsize())
                .map(|i| if dtype == Dtype::Bool { (i as u8 ^ seed) & 1 } else { i as u8 ^ seed })
                .collect();
            let t = decode_tensor(&tensor("x", dtype.name(), &dims), Some(raw.clone()));
            prop_assert_eq!(t.map(|t| t.data).ok(), Some(Data::Raw(raw)));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_bytes_splitter(data in proptest::collection::vec(any::<u8>(), 0..64), count in 0usize..8) {
            let _ = split_bytes("s", &data, count);
        }
    }
}
