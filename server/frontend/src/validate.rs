//! Checks decoded tensors against a model's published signature, before anything is
//! queued, so one bad request is refused alone (messages mirror `server/validation.py`).

use crate::decode::{Data, Dtype, Tensor};
use crate::errors::{short, Refusal};

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub inputs: Vec<Spec>,
    pub outputs: Vec<Spec>,
    /// 0: the model does not batch; > 0: the first dimension is the batch dimension.
    pub max_batch_size: i64,
}

fn names(specs: &[Spec]) -> String {
    let mut names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.join(", ")
}

/// Rows of a valid request, with its tensors reordered to the signature's input order.
pub fn validate_inputs(signature: &Signature, tensors: &mut [Tensor]) -> Result<i64, Refusal> {
    if let Some(unknown) = tensors
        .iter()
        .find(|t| !signature.inputs.iter().any(|s| s.name == t.name))
    {
        return Err(Refusal::invalid(format!(
            "unknown input '{}'; the model takes {}",
            short(&unknown.name),
            names(&signature.inputs)
        )));
    }
    let mut missing: Vec<&str> = signature
        .inputs
        .iter()
        .filter(|s| !tensors.iter().any(|t| t.name == s.name))
        .map(|s| s.name.as_str())
        .collect();
    missing.sort_unstable();
    if let Some(first) = missing.first() {
        return Err(Refusal::invalid(format!("missing input '{first}'")));
    }
    let batching = signature.max_batch_size > 0;
    let mut rows: Option<i64> = None;
    for spec in &signature.inputs {
        let Some(tensor) = tensors.iter().find(|t| t.name == spec.name) else {
            continue;
        };
        check_tensor(spec, tensor)?;
        if batching {
            let have = tensor.shape.first().copied().unwrap_or(0);
            if have < 1 {
                return Err(Refusal::invalid(format!(
                    "input '{}': batch dimension is 0; send at least one row",
                    spec.name
                )));
            }
            match rows {
                None => rows = Some(have),
                Some(r) if r != have => {
                    return Err(Refusal::invalid(format!(
                        "input '{}': {have} rows, but other inputs have {r}; every input needs the same batch size",
                        spec.name
                    )))
                }
                Some(_) => {}
            }
        }
    }
    tensors.sort_by_key(|t| signature.inputs.iter().position(|s| s.name == t.name));
    Ok(rows.unwrap_or(1))
}

fn check_tensor(spec: &Spec, tensor: &Tensor) -> Result<(), Refusal> {
    let got = tensor.dtype.name();
    if got != spec.dtype {
        return Err(Refusal::invalid(format!(
            "input '{}': datatype {got}, but the model expects {}",
            spec.name, spec.dtype
        )));
    }
    if tensor.shape.len() != spec.shape.len() {
        return Err(Refusal::invalid(format!(
            "input '{}': {} dimensions (shape {:?}), but the model expects {} (shape {:?})",
            spec.name,
            tensor.shape.len(),
            tensor.shape,
            spec.shape.len(),
            spec.shape
        )));
    }
    for (axis, (&want, &have)) in spec.shape.iter().zip(&tensor.shape).enumerate() {
        if want >= 0 && want != have {
            return Err(Refusal::invalid(format!(
                "input '{}': dimension {axis} is {have}, but the model expects {want} (shape {:?}, -1 = any)",
                spec.name, spec.shape
            )));
        }
    }
    if tensor.dtype == Dtype::Bytes {
        check_text(spec, tensor)?;
    }
    Ok(())
}

/// BYTES inputs feed ONNX string tensors, which must be UTF-8: checked per request so a
/// bad one is refused alone instead of failing the batch it would have joined.
fn check_text(spec: &Spec, tensor: &Tensor) -> Result<(), Refusal> {
    if let Data::Bytes(items) = &tensor.data {
        for (index, item) in items.iter().enumerate() {
            if let Err(e) = std::str::from_utf8(item) {
                return Err(Refusal::invalid(format!(
                    "input '{}': BYTES element {index} is not valid UTF-8: {e}",
                    spec.name
                )));
            }
        }
    }
    Ok(())
}

/// The outputs to return, in order (None: every output), or INVALID_ARGUMENT.
pub fn validate_outputs(
    signature: &Signature,
    requested: &[String],
) -> Result<Option<Vec<String>>, Refusal> {
    if requested.is_empty() {
        return Ok(None);
    }
    for (index, name) in requested.iter().enumerate() {
        if !signature.outputs.iter().any(|s| &s.name == name) {
            return Err(Refusal::invalid(format!(
                "unknown output '{}' requested; the model produces {}",
                short(name),
                names(&signature.outputs)
            )));
        }
        if requested[..index].contains(name) {
            return Err(Refusal::invalid(format!(
                "output '{}' requested twice",
                short(name)
            )));
        }
    }
    Ok(Some(requested.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Data, Dtype, Tensor};

    fn spec(name: &str, dtype: &str, shape: &[i64]) -> Spec {
        Spec {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                spec("ids", "INT64", &[-1, -1]),
                spec("mask", "INT64", &[-1, -1]),
            ],
            outputs: vec![
                spec("logits", "FP32", &[-1, 2]),
                spec("label", "INT64", &[-1]),
            ],
            max_batch_size: 64,
        }
    }

    fn tensor(name: &str, dtype: Dtype, shape: &[i64]) -> Tensor {
        let count: i64 = shape.iter().product();
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: Data::Raw(vec![0; count as usize * dtype.itemsize()]),
        }
    }

    #[test]
    fn a_valid_request_gives_its_rows_and_signature_order() {
        let mut tensors = vec![
            tensor("mask", Dtype::I64, &[3, 7]),
            tensor("ids", Dtype::I64, &[3, 7]),
        ];
        assert_eq!(validate_inputs(&signature(), &mut tensors).ok(), Some(3));
        assert_eq!(tensors[0].name, "ids");
    }

    #[test]
    fn mismatches_name_the_input() {
        let cases: Vec<(Vec<Tensor>, &str)> = vec![
            (
                vec![tensor("ids", Dtype::I64, &[1, 2])],
                "missing input 'mask'",
            ),
            (
                vec![
                    tensor("ids", Dtype::I32, &[1, 2]),
                    tensor("mask", Dtype::I64, &[1, 2]),
                ],
                "input 'ids': datatype INT32, but the model expects INT64",
            ),
            (
                vec![
                    tensor("ids", Dtype::I64, &[2]),
                    tensor("mask", Dtype::I64, &[1, 2]),
                ],
                "input 'ids': 1 dimensions",
            ),
            (
                vec![
                    tensor("ids", Dtype::I64, &[2, 2]),
                    tensor("mask", Dtype::I64, &[1, 2]),
                ],
                "every input needs the same batch size",
            ),
            (
                vec![
                    tensor("ids", Dtype::I64, &[0, 2]),
                    tensor("mask", Dtype::I64, &[0, 2]),
                ],
                "batch dimension is 0",
            ),
            (
                vec![tensor(&"z".repeat(5000), Dtype::I64, &[1, 2])],
                "unknown input 'zzzz",
            ),
        ];
        for (mut tensors, expected) in cases {
            let err = validate_inputs(&signature(), &mut tensors).unwrap_err();
            assert!(
                err.message.contains(expected),
                "{} !~ {expected}",
                err.message
            );
            assert!(err.message.len() < 300);
        }
    }

    #[test]
    fn fixed_dimensions_are_enforced() {
        let sig = Signature {
            inputs: vec![spec("x", "FP32", &[-1, 4])],
            outputs: vec![],
            max_batch_size: 8,
        };
        let err = validate_inputs(&sig, &mut [tensor("x", Dtype::F32, &[1, 3])]).unwrap_err();
        assert!(err
            .message
            .contains("dimension 1 is 3, but the model expects 4"));
    }

    #[test]
    fn bytes_inputs_must_be_utf8() {
        let sig = Signature {
            inputs: vec![spec("s", "BYTES", &[-1])],
            outputs: vec![],
            max_batch_size: 8,
        };
        let mut bad = vec![Tensor {
            name: "s".into(),
            dtype: Dtype::Bytes,
            shape: vec![2],
            data: Data::Bytes(vec![b"ok".to_vec(), vec![0xff]]),
        }];
        let err = validate_inputs(&sig, &mut bad).unwrap_err();
        assert!(err.message.contains("BYTES element 1 is not valid UTF-8"));
    }

    #[test]
    fn requested_outputs_must_exist_once() {
        let sig = signature();
        assert_eq!(validate_outputs(&sig, &[]).ok(), Some(None));
        assert!(validate_outputs(&sig, &["nope".into()]).is_err());
        assert!(validate_outputs(&sig, &["label".into(), "label".into()]).is_err());
        assert_eq!(
            validate_outputs(&sig, &["label".into()]).ok(),
            Some(Some(vec!["label".to_string()]))
        );
    }
}
