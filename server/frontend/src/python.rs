//! The Python face: `kairos.server.frontend._native.Frontend`. Arrivals go to Python
//! in bulk (`take`, one call per wake-up), results come back in bulk (`complete`).
//! Inputs reach Python as numpy arrays over the decoded buffers, without a copy.

use crate::decode::{join_bytes, Data, Dtype, Tensor};
use crate::errors::Refusal;
use crate::handoff::{InferArrival, ModelEntry, Shared, VersionEntry};
use crate::pb::model_infer_response::InferOutputTensor;
use crate::server::{start, Options, Running, Tls};
use crate::service::{deliver, deliver_call, Config, Outputs};
use crate::validate::{Signature, Spec};
use numpy::npyffi::{self, npy_intp, NpyTypes, NPY_TYPES, PY_ARRAY_API};
use numpy::{PyArray1, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::os::raw::c_int;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

type SpecTuple = (String, String, Vec<i64>);
type SignatureTuple = (Vec<SpecTuple>, Vec<SpecTuple>, i64);

fn typenum(dtype: Dtype) -> c_int {
    (match dtype {
        Dtype::Bool => NPY_TYPES::NPY_BOOL,
        Dtype::I8 => NPY_TYPES::NPY_BYTE,
        Dtype::U8 => NPY_TYPES::NPY_UBYTE,
        Dtype::I16 => NPY_TYPES::NPY_SHORT,
        Dtype::U16 => NPY_TYPES::NPY_USHORT,
        Dtype::I32 => NPY_TYPES::NPY_INT,
        Dtype::U32 => NPY_TYPES::NPY_UINT,
        Dtype::I64 => NPY_TYPES::NPY_LONG,
        Dtype::U64 => NPY_TYPES::NPY_ULONG,
        Dtype::F16 => NPY_TYPES::NPY_HALF,
        Dtype::F32 => NPY_TYPES::NPY_FLOAT,
        Dtype::F64 => NPY_TYPES::NPY_DOUBLE,
        Dtype::Bytes => NPY_TYPES::NPY_OBJECT,
    }) as c_int
}

/// A numpy array of `dtype` and `shape` over `raw`, which the array then owns.
fn numeric_array<'py>(
    py: Python<'py>,
    dtype: Dtype,
    shape: &[i64],
    raw: Vec<u8>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut dims: Vec<npy_intp> = shape.iter().map(|&d| d as npy_intp).collect();
    let itemsize = dtype.itemsize().max(1);
    // Vec<u8> buffers come from malloc (16-byte aligned); copy the odd one that is not.
    let raw = if (raw.as_ptr() as usize).is_multiple_of(itemsize) {
        raw
    } else {
        let mut words = vec![0u64; raw.len().div_ceil(8)];
        // SAFETY: `words` holds at least raw.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(raw.as_ptr(), words.as_mut_ptr().cast(), raw.len())
        };
        return aligned_array(
            py,
            dtype,
            &mut dims,
            PyArray1::from_vec(py, words).into_any(),
        );
    };
    if raw.is_empty() {
        // SAFETY: with no data numpy allocates the (empty) array itself.
        return unsafe { new_array(py, dtype, &mut dims, std::ptr::null_mut(), 0) };
    }
    aligned_array(py, dtype, &mut dims, PyArray1::from_vec(py, raw).into_any())
}

/// `PyArray_NewFromDescr` for a C-contiguous array of `dtype` and `dims` over `data`
/// (null: numpy allocates).
///
/// # Safety
/// `data`, when not null, must hold dims x itemsize bytes that outlive the array.
unsafe fn new_array<'py>(
    py: Python<'py>,
    dtype: Dtype,
    dims: &mut [npy_intp],
    data: *mut std::ffi::c_void,
    flags: c_int,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: as the caller promises; descr and subtype come from numpy itself.
    unsafe {
        let descr = PY_ARRAY_API.PyArray_DescrFromType(py, typenum(dtype));
        let subtype = npyffi::get_type_object(py, NpyTypes::PyArray_Type);
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            subtype,
            descr,
            dims.len() as c_int,
            dims.as_mut_ptr(),
            std::ptr::null_mut(),
            data,
            flags,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    }
}

/// A view of `base`'s buffer (a 1-d numpy array that owns the bytes) as dtype + dims.
fn aligned_array<'py>(
    py: Python<'py>,
    dtype: Dtype,
    dims: &mut [npy_intp],
    base: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the new array points into `base`'s buffer, which is large enough for
    // dims x itemsize (checked by decode) and stays alive as the array's base object.
    unsafe {
        let data = (*base.as_ptr().cast::<npyffi::PyArrayObject>()).fields.data;
        let flags = npyffi::NPY_ARRAY_C_CONTIGUOUS
            | npyffi::NPY_ARRAY_WRITEABLE
            | npyffi::NPY_ARRAY_ALIGNED;
        let array = new_array(py, dtype, dims, data.cast(), flags)?;
        if PY_ARRAY_API.PyArray_SetBaseObject(py, array.as_ptr().cast(), base.into_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(array)
    }
}

/// A tensor as Python sees it: a numpy array, or for BYTES a (list of bytes, shape)
/// pair that the Python face turns into an object array.
fn tensor_object<'py>(py: Python<'py>, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    match tensor.data {
        Data::Raw(raw) => numeric_array(py, tensor.dtype, &tensor.shape, raw),
        Data::Bytes(items) => {
            let list = PyList::new(py, items.iter().map(|i| PyBytes::new(py, i)))?;
            Ok((list, tensor.shape).into_pyobject(py)?.into_any())
        }
    }
}

fn shape_key<'py>(py: Python<'py>, arrival: &InferArrival) -> PyResult<Bound<'py, PyTuple>> {
    let skip = usize::from(arrival.batching);
    let parts = arrival.inputs.iter().map(|t| {
        let dims = PyTuple::new(py, t.shape.iter().skip(skip)).map(|d| d.into_any());
        (t.name.as_str(), dims)
    });
    let mut items = Vec::with_capacity(arrival.inputs.len());
    for (name, dims) in parts {
        items.push(PyTuple::new(
            py,
            [PyString::new(py, name).into_any(), dims?],
        )?);
    }
    PyTuple::new(py, items)
}

fn arrival_object<'py>(py: Python<'py>, arrival: InferArrival) -> PyResult<Bound<'py, PyTuple>> {
    let key = shape_key(py, &arrival)?;
    let inputs = PyDict::new(py);
    let mut text = false;
    for tensor in arrival.inputs {
        text |= tensor.dtype == Dtype::Bytes;
        let name = PyString::new(py, &tensor.name);
        inputs.set_item(name, tensor_object(py, tensor)?)?;
    }
    let klass = if arrival.batch_class {
        "batch"
    } else {
        "online"
    };
    let items: [Bound<'py, PyAny>; 15] = [
        arrival.rid.into_pyobject(py)?.into_any(),
        PyString::new(py, &arrival.model).into_any(),
        PyString::new(py, &arrival.requested_version).into_any(),
        PyString::new(py, &arrival.version).into_any(),
        inputs.into_any(),
        arrival.outputs.into_pyobject(py)?.into_any(),
        arrival.rows.into_pyobject(py)?.into_any(),
        arrival.arrival.into_pyobject(py)?.into_any(),
        arrival.deadline.into_pyobject(py)?.into_any(),
        arrival.priority.into_pyobject(py)?.into_any(),
        PyString::new(py, klass).into_any(),
        PyString::new(py, &arrival.request_id).into_any(),
        key.into_any(),
        pyo3::types::PyBool::new(py, text).to_owned().into_any(),
        arrival.min_accuracy.into_pyobject(py)?.into_any(),
    ];
    PyTuple::new(py, items)
}

fn dtype_of(array: &Bound<'_, PyUntypedArray>) -> Option<Dtype> {
    let descr = array.dtype();
    let size = descr.itemsize();
    Some(match (descr.kind(), size) {
        (b'b', 1) => Dtype::Bool,
        (b'u', 1) => Dtype::U8,
        (b'u', 2) => Dtype::U16,
        (b'u', 4) => Dtype::U32,
        (b'u', 8) => Dtype::U64,
        (b'i', 1) => Dtype::I8,
        (b'i', 2) => Dtype::I16,
        (b'i', 4) => Dtype::I32,
        (b'i', 8) => Dtype::I64,
        (b'f', 2) => Dtype::F16,
        (b'f', 4) => Dtype::F32,
        (b'f', 8) => Dtype::F64,
        (b'O' | b'S' | b'U', _) => Dtype::Bytes,
        _ => return None,
    })
}

fn text_elements(array: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let items = array.call_method0("ravel")?.call_method0("tolist")?;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for item in items.try_iter()? {
        let item = item?;
        if let Ok(bytes) = item.cast::<PyBytes>() {
            parts.push(bytes.as_bytes().to_vec());
        } else if let Ok(text) = item.cast::<PyString>() {
            parts.push(text.to_str()?.as_bytes().to_vec());
        } else {
            parts.push(item.str()?.to_str()?.as_bytes().to_vec());
        }
    }
    Ok(join_bytes(parts.iter().map(Vec::as_slice)))
}

/// One output array, encoded: (metadata, raw contents).
fn encode_output(name: &str, value: &Bound<'_, PyAny>) -> PyResult<(InferOutputTensor, Vec<u8>)> {
    let array = value
        .cast::<PyUntypedArray>()
        .map_err(|_| PyValueError::new_err(format!("output '{name}' is not a numpy array")))?;
    let dtype = dtype_of(array).ok_or_else(|| {
        PyValueError::new_err(format!("output '{name}': dtype has no protocol datatype"))
    })?;
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    let raw = if dtype == Dtype::Bytes {
        text_elements(value)?
    } else if array.is_c_contiguous() {
        let count: usize = array.shape().iter().product();
        let bytes = count * dtype.itemsize();
        // SAFETY: a C-contiguous array's data holds count x itemsize bytes; we hold
        // the GIL, so it cannot be freed while we copy.
        unsafe {
            let data = (*array.as_array_ptr()).fields.data as *const u8;
            if bytes == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, bytes).to_vec()
            }
        }
    } else {
        let copy = value.call_method1("copy", ("C",))?;
        return encode_output(name, &copy);
    };
    let tensor = InferOutputTensor {
        name: name.to_string(),
        datatype: dtype.name().to_string(),
        shape,
        ..Default::default()
    };
    Ok((tensor, raw))
}

fn encode_outputs(outputs: &Bound<'_, PyAny>) -> PyResult<Outputs> {
    let mut tensors = Vec::new();
    let mut raws = Vec::new();
    for pair in outputs.try_iter()? {
        let pair = pair?;
        let (name, value): (String, Bound<'_, PyAny>) = pair.extract()?;
        let (tensor, raw) = encode_output(&name, &value)?;
        tensors.push(tensor);
        raws.push(raw);
    }
    Ok((tensors, raws, None))
}

fn code_of(value: i32) -> Code {
    Code::from_i32(value)
}

fn reason_of(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "refused_admission",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        _ => "internal",
    }
}

fn specs(items: Vec<SpecTuple>) -> Vec<Spec> {
    items
        .into_iter()
        .map(|(name, dtype, shape)| Spec { name, dtype, shape })
        .collect()
}

#[pyclass(frozen, module = "kairos.server.frontend._native")]
pub struct Frontend {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
    port: u16,
}

impl Frontend {
    fn with_running<T>(&self, f: impl FnOnce(&mut Running) -> T) -> Option<T> {
        self.running.lock().as_mut().map(f)
    }
}

#[pymethods]
impl Frontend {
    #[new]
    #[pyo3(signature = (host, port, *, default_slo_s=1.0, max_rows_per_request=100_000,
        max_streams=64, max_queued=0, max_message_bytes=64 << 20, tokens=Vec::new(),
        tls_cert=None, tls_key=None, tls_client_ca=None, worker_threads=1,
        max_concurrent_streams=4096))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        default_slo_s: f64,
        max_rows_per_request: i64,
        max_streams: usize,
        max_queued: usize,
        max_message_bytes: usize,
        tokens: Vec<String>,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        tls_client_ca: Option<Vec<u8>>,
        worker_threads: usize,
        max_concurrent_streams: u32,
    ) -> PyResult<Self> {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(Tls {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "TLS needs both a certificate and a key",
                ))
            }
        };
        let options = Options {
            host,
            port,
            max_concurrent_streams,
            max_message_bytes,
            worker_threads,
            tls,
            config: Config {
                default_slo_s,
                max_rows_per_request,
                max_streams,
                max_queued,
                tokens: tokens.into_iter().map(String::into_bytes).collect(),
            },
        };
        let running = py
            .detach(|| start(options))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Frontend {
            shared: running.shared.clone(),
            port: running.port,
            running: Mutex::new(Some(running)),
        })
    }

    /// The bound gRPC port.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Readable when arrivals wait: register it with the event loop and call `take`.
    #[getter]
    fn wakeup_fd(&self) -> i32 {
        self.shared.eventfd()
    }

    /// Everything known of one model name: its ready versions (version, signature,
    /// slo_s, L(1) in seconds), the latest, versions that failed and why, and the
    /// reason none is served.
    #[pyo3(signature = (name, versions, latest, failed, reason))]
    fn publish(
        &self,
        name: String,
        versions: Vec<(String, SignatureTuple, Option<f64>, f64)>,
        latest: Option<String>,
        failed: Vec<(String, String)>,
        reason: String,
    ) {
        let mut entry = ModelEntry {
            latest,
            failed: failed.into_iter().collect(),
            reason,
            ..Default::default()
        };
        for (version, (inputs, outputs, max_batch_size), slo_s, min_service_s) in versions {
            let signature = Signature {
                inputs: specs(inputs),
                outputs: specs(outputs),
                max_batch_size,
            };
            let value = VersionEntry::new(version.clone(), signature, slo_s);
            value.set_state(min_service_s, 0.0, f64::INFINITY);
            entry.versions.insert(version, Arc::new(value));
        }
        self.shared.models.write().insert(name, entry);
    }

    /// The scheduler's state of ready versions, for native refusals:
    /// [(model, version, L(1) s, predicted delay of a new 1-row request s, deadline of
    /// the last request queued)]; zeros when a version's queue is empty.
    fn set_min_service(&self, items: Vec<(String, String, f64, f64, f64)>) {
        let models = self.shared.models.read();
        for (model, version, min_service, delay, tail) in items {
            if let Some(v) = models.get(&model).and_then(|m| m.versions.get(&version)) {
                v.set_state(min_service, delay, tail);
            }
        }
    }

    /// ServerReady and health (SERVING / NOT_SERVING). The first `ready` also ends
    /// start-up: from then on a model name the table does not know is NOT_FOUND.
    fn set_ready(&self, py: Python<'_>, ready: bool) {
        if ready {
            self.shared.started.store(true, Ordering::Release);
        }
        self.shared.ready.store(ready, Ordering::Release);
        py.detach(|| self.with_running(|r| r.set_health(ready)));
    }

    /// Drain begins: not ready, models not ready, health NOT_SERVING; requests are
    /// still served until `stop` sends GOAWAY.
    fn begin_drain(&self, py: Python<'_>) {
        self.shared.draining.store(true, Ordering::Release);
        self.set_ready(py, false);
    }

    /// Let every open stream answer what it has read, then end it (UNAVAILABLE).
    fn close_streams(&self) {
        self.shared.closing_streams.store(true, Ordering::Release);
        self.shared.streams_closed.notify_waiters();
    }

    /// Requests received and not yet answered.
    #[getter]
    fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Everything that arrived since the last call: (inferences, calls, refusals).
    /// inference: (rid, model, requested version, version, inputs, outputs, rows,
    /// arrival, deadline, priority, class, id, shape key, has BYTES inputs, accuracy
    /// floor);
    /// call: (rid, method, encoded request); refusal: (model, version, reason,
    /// class, count) for those refused natively.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (infers, calls) = self.shared.take();
        let arrivals = PyList::empty(py);
        for arrival in infers {
            let rid = arrival.rid;
            match arrival_object(py, arrival) {
                Ok(object) => arrivals.append(object)?,
                // One request that cannot become Python objects must not take the
                // others down with it.
                Err(e) => deliver(
                    &self.shared,
                    rid,
                    Err(Refusal::internal(format!(
                        "cannot hand the request over: {e}"
                    ))),
                ),
            }
        }
        let forwarded = PyList::empty(py);
        for call in calls {
            forwarded.append((call.rid, call.method, PyBytes::new(py, &call.payload)))?;
        }
        let refused = PyList::empty(py);
        for ((model, version, reason, batch), count) in self.shared.take_refusals() {
            let klass = if batch { "batch" } else { "online" };
            refused.append((model, version, reason, klass, count))?;
        }
        PyTuple::new(
            py,
            [
                arrivals.into_any(),
                forwarded.into_any(),
                refused.into_any(),
            ],
        )
    }

    /// Results: (rid, [(name, array), ...]) or (rid, [...], variant name or None) for an
    /// answer, (rid, None, code, message)
    /// for a failure (code: the gRPC status number). Returns how many were encoded.
    fn complete(&self, results: &Bound<'_, PyList>) -> PyResult<usize> {
        let mut done = 0;
        for item in results.iter() {
            let item = item.cast::<PyTuple>()?;
            let rid: u64 = item.get_item(0)?.extract()?;
            let outputs = item.get_item(1)?;
            let reply = if outputs.is_none() {
                let code = code_of(item.get_item(2)?.extract()?);
                let message: String = item.get_item(3)?.extract()?;
                Err(Refusal::new(code, reason_of(code), message))
            } else {
                match encode_outputs(&outputs) {
                    Ok(mut encoded) => {
                        // (rid, outputs, variant): the model-group variant that served it
                        if item.len() > 2 {
                            encoded.2 = item.get_item(2)?.extract()?;
                        }
                        Ok(encoded)
                    }
                    Err(e) => Err(Refusal::internal(format!("cannot encode the outputs: {e}"))),
                }
            };
            deliver(&self.shared, rid, reply);
            done += 1;
        }
        Ok(done)
    }

    /// A forwarded call's answer: the encoded response, or None with a status.
    #[pyo3(signature = (rid, payload, code=0, message=String::new()))]
    fn complete_call(&self, rid: u64, payload: Option<Vec<u8>>, code: i32, message: String) {
        let reply = match payload {
            Some(bytes) if code == 0 => Ok(bytes),
            _ => Err(Status::new(code_of(code), message)),
        };
        deliver_call(&self.shared, rid, reply);
    }

    /// Graceful stop: close the listener, GOAWAY on every connection (requests a
    /// client sent before it saw the GOAWAY are still read and served), wait up to
    /// grace_s for the connections to finish, then close.
    fn stop(&self, py: Python<'_>, grace_s: f64) {
        let running = self.running.lock().take();
        if let Some(mut running) = running {
            py.detach(move || {
                running.stop(Duration::from_secs_f64(grace_s.max(0.0)));
                running.runtime.shutdown_timeout(Duration::from_millis(200));
            });
        }
    }
}

/// Decode an encoded ModelInferRequest's inputs as the server does (for tests and
/// tools): {name: array}, BYTES inputs as (list of bytes, shape). ValueError names
/// the problem.
#[pyfunction]
fn decode_request<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let mut request = <crate::pb::ModelInferRequest as prost::Message>::decode(payload)
        .map_err(|e| PyValueError::new_err(format!("not a ModelInferRequest: {e}")))?;
    let tensors =
        crate::decode::decode_inputs(&mut request).map_err(|r| PyValueError::new_err(r.message))?;
    let inputs = PyDict::new(py);
    for tensor in tensors {
        let name = PyString::new(py, &tensor.name);
        inputs.set_item(name, tensor_object(py, tensor)?)?;
    }
    Ok(inputs)
}

/// Encode outputs [(name, array)] as the server does: an encoded ModelInferResponse.
#[pyfunction]
fn encode_response<'py>(
    py: Python<'py>,
    outputs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let (tensors, raw, _) = encode_outputs(outputs)?;
    let response = crate::pb::ModelInferResponse {
        outputs: tensors,
        raw_output_contents: raw,
        ..Default::default()
    };
    Ok(PyBytes::new(py, &prost::Message::encode_to_vec(&response)))
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Frontend>()?;
    module.add_function(wrap_pyfunction!(decode_request, module)?)?;
    module.add_function(wrap_pyfunction!(encode_response, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
