//! The one request a run sends: built from the inputs (or the model's metadata), encoded once.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::args::{tensor_size_ok, InputSpec, ParamValue};

pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("inference");
}

/// The V2 datatype strings, exactly as the protocol spells them.
pub const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
];

/// Bytes per element in raw contents; None for BYTES (length-prefixed) and unknown types.
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Everything that shapes the request, apart from the inputs.
pub struct RequestOptions<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub params: &'a [(String, ParamValue)],
    pub seed: u64,
}

/// Raw little-endian contents for one tensor of `count` elements.
fn tensor_contents(datatype: &str, count: usize, rng: &mut StdRng) -> Vec<u8> {
    let normal = |rng: &mut StdRng| -> f32 { StandardNormal.sample(rng) };
    match datatype {
        "FP32" => (0..count).flat_map(|_| normal(rng).to_le_bytes()).collect(),
        "FP64" => (0..count)
            .flat_map(|_| {
                let v: f64 = StandardNormal.sample(rng);
                v.to_le_bytes()
            })
            .collect(),
        "FP16" => (0..count)
            .flat_map(|_| f32_to_f16(normal(rng)).to_le_bytes())
            .collect(),
        "BF16" => (0..count)
            .flat_map(|_| ((normal(rng).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        "BYTES" => (0..count).flat_map(|_| [1u8, 0, 0, 0, b'0']).collect(),
        other => vec![0u8; count * element_size(other).unwrap_or(1)],
    }
}

/// IEEE half from f32, round-to-nearest on the mantissa; tiny values flush to zero, huge to inf.
/// Good enough for random normal inputs, which is all it is used for.
fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = bits & 0x7f_ffff;
    if exp <= 0 {
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    let half = sign as u32 | ((exp as u32) << 10) | (mantissa >> 13);
    let round = (mantissa >> 12) & 1;
    (half + round).min(u32::from(sign) | 0x7c00) as u16
}

fn parameter(value: &ParamValue) -> pb::InferParameter {
    use pb::infer_parameter::ParameterChoice;
    let choice = match value {
        ParamValue::Bool(b) => ParameterChoice::BoolParam(*b),
        ParamValue::Int(i) => ParameterChoice::Int64Param(*i),
        ParamValue::Double(d) => ParameterChoice::DoubleParam(*d),
        ParamValue::Str(s) => ParameterChoice::StringParam(s.clone()),
    };
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}

/// The ModelInferRequest: every input in `raw_input_contents`, in order.
pub fn build_request(inputs: &[InputSpec], options: &RequestOptions) -> pb::ModelInferRequest {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut raw = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let count = spec.dims.iter().map(|d| *d as usize).product();
        raw.push(tensor_contents(&spec.datatype, count, &mut rng));
        tensors.push(pb::model_infer_request::InferInputTensor {
            name: spec.name.clone(),
            datatype: spec.datatype.clone(),
            shape: spec.dims.clone(),
            parameters: BTreeMap::new(),
            contents: None,
        });
    }
    let parameters = options
        .params
        .iter()
        .map(|(k, v)| (k.clone(), parameter(v)))
        .collect();
    pb::ModelInferRequest {
        model_name: options.model.to_string(),
        model_version: options.version.to_string(),
        id: String::new(),
        parameters,
        inputs: tensors,
        outputs: Vec::new(),
        raw_input_contents: raw,
    }
}

/// The request's wire bytes: built once, sent as is by every call.
pub fn encode(request: &pb::ModelInferRequest) -> Bytes {
    Bytes::from(request.encode_to_vec())
}

/// Inputs for `rows` rows from the model's metadata: a leading -1 is the batch dim, other -1
/// dims come from `input_shape` (as `kairos bench --input-shape` does).
pub fn specs_from_metadata(
    meta: &pb::ModelMetadataResponse,
    rows: u32,
    input_shape: Option<&[i64]>,
) -> Result<Vec<InputSpec>, String> {
    if meta.inputs.is_empty() {
        return Err(format!(
            "model {:?} lists no inputs in its metadata",
            meta.name
        ));
    }
    let mut specs = Vec::with_capacity(meta.inputs.len());
    for tensor in &meta.inputs {
        let mut dims = tensor.shape.clone();
        if dims.first() == Some(&-1) {
            let rest = input_shape.map_or_else(|| dims[1..].to_vec(), <[i64]>::to_vec);
            dims = std::iter::once(i64::from(rows)).chain(rest).collect();
        } else if let Some(shape) = input_shape {
            dims = shape.to_vec();
        }
        let name: String = tensor.name.chars().take(64).collect();
        if dims.iter().any(|d| *d < 0) {
            return Err(format!(
                "input {name:?} has open dims {:?}: give --input-shape",
                tensor.shape
            ));
        }
        if !DATATYPES.contains(&tensor.datatype.as_str()) {
            let datatype: String = tensor.datatype.chars().take(32).collect();
            return Err(format!(
                "input {name:?}: datatype {datatype:?} is not supported"
            ));
        }
        tensor_size_ok(&tensor.datatype, &dims)?;
        specs.push(InputSpec {
            name: tensor.name.clone(),
            datatype: tensor.datatype.clone(),
            dims,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_input;

    fn options(params: &[(String, ParamValue)]) -> RequestOptions<'_> {
        RequestOptions {
            model: "mlp256",
            version: "1",
            params,
            seed: 7,
        }
    }

    #[test]
    fn encoded_request_decodes_back_to_what_was_built() {
        let params = vec![
            ("priority".to_string(), ParamValue::Int(2)),
            ("fast".to_string(), ParamValue::Bool(true)),
            ("tag".to_string(), ParamValue::Str("x".into())),
            ("w".to_string(), ParamValue::Double(0.5)),
        ];
        let inputs = vec![
            parse_input("input:FP32:2x256").unwrap(),
            parse_input("ids:INT64:2x3").unwrap(),
            parse_input("text:BYTES:2").unwrap(),
            parse_input("h:FP16:4").unwrap(),
        ];
        let built = build_request(&inputs, &options(&params));
        let wire = encode(&built);
        let back = pb::ModelInferRequest::decode(wire.clone()).unwrap();
        assert_eq!(back, built);
        assert_eq!(back.model_name, "mlp256");
        assert_eq!(back.inputs[0].shape, vec![2, 256]);
        assert_eq!(back.raw_input_contents[0].len(), 2 * 256 * 4);
        assert_eq!(back.raw_input_contents[1], vec![0u8; 2 * 3 * 8]);
        assert_eq!(
            back.raw_input_contents[2],
            vec![1, 0, 0, 0, b'0', 1, 0, 0, 0, b'0']
        );
        assert_eq!(back.raw_input_contents[3].len(), 8);
        use pb::infer_parameter::ParameterChoice;
        assert_eq!(
            back.parameters["priority"].parameter_choice,
            Some(ParameterChoice::Int64Param(2))
        );
        assert_eq!(
            back.parameters["fast"].parameter_choice,
            Some(ParameterChoice::BoolParam(true))
        );
        // Same seed, same bytes; the floats are standard normal, not zeros.
        assert_eq!(encode(&build_request(&inputs, &options(&params))), wire);
        let floats: Vec<f32> = back.raw_input_contents[0]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mean = floats.iter().sum::<f32>() / floats.len() as f32;
        assert!(mean.abs() < 0.2 && floats.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(0.5), 0x3800);
        assert_eq!(f32_to_f16(1e-9), 0);
        assert_eq!(f32_to_f16(1e9), 0x7c00);
    }

    #[test]
    fn metadata_gives_rows_and_open_dims() {
        let tensor =
            |name: &str, dt: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
                name: name.into(),
                datatype: dt.into(),
                shape,
            };
        let mut meta = pb::ModelMetadataResponse {
            name: "m".into(),
            inputs: vec![tensor("input", "FP32", vec![-1, 256])],
            ..Default::default()
        };
        let specs = specs_from_metadata(&meta, 3, None).unwrap();
        assert_eq!(specs[0].dims, vec![3, 256]);
        meta.inputs = vec![tensor("x", "FP32", vec![-1, -1])];
        assert!(specs_from_metadata(&meta, 1, None)
            .unwrap_err()
            .contains("--input-shape"));
        assert_eq!(
            specs_from_metadata(&meta, 2, Some(&[8])).unwrap()[0].dims,
            vec![2, 8]
        );
        meta.inputs = vec![tensor("x", "COMPLEX", vec![1])];
        assert!(specs_from_metadata(&meta, 1, None).is_err());
        meta.inputs.clear();
        assert!(specs_from_metadata(&meta, 1, None).is_err());
    }
}
