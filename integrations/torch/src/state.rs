//! ire-core's [`StateDict`] as plain Python data, and back: what `state_dict()` holds.
//!
//! A state is a dict `{"format_version": int, "optimizer": str, "entries": [[name, value],
//! ...]}`; a value is an `int` (a counter), a `bool`, a `list` of `int` (per-tensor counters), a
//! 1-D CPU tensor (`float32`, `float64` or `uint8`: moments, estimates, masks), or a nested
//! state dict. Tensors are copied bit for bit both ways, so a round trip is exact, and
//! `torch.save` / `torch.load` store them natively.

use ire_core::DType;
use ire_core::state::{StateDict, StateEntry, StateValue};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList};

use crate::device::{self, Accept};
use crate::error::{Result, Role, RoleKind, TorchError};

/// A new CPU tensor holding a copy of `v`.
fn tensor<'py, E: Copy>(py: Python<'py>, v: &[E], dtype: DType) -> Result<Bound<'py, PyAny>> {
    let torch = py.import("torch")?;
    let name = match dtype {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::U8 => "uint8",
        DType::U32 => "uint32",
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", torch.getattr(name)?)?;
    let t = torch.getattr("empty")?.call(((v.len(),),), Some(&kwargs))?;
    let role = Role {
        kind: RoleKind::Output,
        index: 0,
    };
    let span = device::span_of(&t, role, Accept::Exactly(dtype))?;
    // SAFETY: `t` is a fresh tensor of `v.len()` elements of `E`'s dtype that nothing else
    // references.
    unsafe { device::write_into(&span, v)? };
    Ok(t)
}

/// The state as Python data.
pub fn to_python<'py>(py: Python<'py>, d: &StateDict) -> Result<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("format_version", d.format_version)?;
    out.set_item("optimizer", &d.optimizer)?;
    let entries = PyList::empty(py);
    for e in &d.entries {
        let v: Bound<'py, PyAny> = match &e.value {
            StateValue::U64(x) => pyo3::types::PyInt::new(py, *x).into_any(),
            StateValue::Bool(x) => PyBool::new(py, *x).to_owned().into_any(),
            StateValue::U64s(x) => PyList::new(py, x)?.into_any(),
            StateValue::F32(x) => tensor(py, x, DType::F32)?,
            StateValue::F64(x) => tensor(py, x, DType::F64)?,
            StateValue::U8(x) => tensor(py, x, DType::U8)?,
            StateValue::Nested(n) => to_python(py, n)?.into_any(),
        };
        let name = pyo3::types::PyString::new(py, &e.name).into_any();
        entries.append(PyList::new(py, [name, v])?)?;
    }
    out.set_item("entries", entries)?;
    Ok(out)
}

fn state_err(msg: String) -> TorchError {
    TorchError::Core(ire_core::Error::State(msg))
}

/// A 1-D CPU tensor's elements, copied.
///
/// # Safety
/// `span` was read by [`device::span_of`] from a tensor alive for this call, with `E`'s dtype.
unsafe fn elements<E: Copy>(span: &device::Span) -> Vec<E> {
    let mut v = Vec::with_capacity(span.len);
    if span.len > 0 {
        // SAFETY: the caller's contract: `len` readable elements of `E`; `v` has capacity
        // for them and they are all initialized by the copy before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(span.ptr as *const E, v.as_mut_ptr(), span.len);
            v.set_len(span.len);
        }
    }
    v
}

/// A state from Python data made by [`to_python`] (or `torch.load` of it).
pub fn from_python(obj: &Bound<'_, PyAny>) -> Result<StateDict> {
    let d = obj
        .cast::<PyDict>()
        .map_err(|_| state_err("the optimizer state must be a dict".into()))?;
    let get = |k: &str| -> Result<Bound<'_, PyAny>> {
        d.get_item(k)?
            .ok_or_else(|| state_err(format!("missing key `{k}` in the optimizer state")))
    };
    let format_version: u32 = get("format_version")?
        .extract()
        .map_err(|_| state_err("`format_version` must be an int".into()))?;
    let optimizer: String = get("optimizer")?
        .extract()
        .map_err(|_| state_err("`optimizer` must be a str".into()))?;
    let mut entries = Vec::new();
    for (n, item) in get("entries")?.try_iter()?.enumerate() {
        let item = item?;
        let not_pair = || {
            state_err(format!(
                "entry {n} of `{optimizer}` is not a [name, value] pair"
            ))
        };
        let pair: Vec<Bound<'_, PyAny>> = item.extract().map_err(|_| not_pair())?;
        let [name, value] = <[_; 2]>::try_from(pair).map_err(|_| not_pair())?;
        let name: String = name.extract().map_err(|_| not_pair())?;
        let value = value_from_python(&name, &value)?;
        entries.push(StateEntry { name, value });
    }
    Ok(StateDict {
        format_version,
        optimizer,
        entries,
    })
}

fn value_from_python(name: &str, v: &Bound<'_, PyAny>) -> Result<StateValue> {
    if v.is_instance_of::<PyBool>() {
        return Ok(StateValue::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract()
            .map(StateValue::U64)
            .map_err(|_| state_err(format!("entry `{name}` is not a counter >= 0")));
    }
    if v.is_instance_of::<PyList>() {
        return v
            .extract()
            .map(StateValue::U64s)
            .map_err(|_| state_err(format!("entry `{name}` is not a list of counters")));
    }
    if v.is_instance_of::<PyDict>() {
        return Ok(StateValue::Nested(from_python(v)?));
    }
    // A tensor: brought to one dense CPU block first (a state loaded with map_location to a
    // device, or saved from a view, is copied back here once).
    let role = Role {
        kind: RoleKind::State,
        index: 0,
    };
    if !v.hasattr("detach")? {
        return Err(state_err(format!(
            "entry `{name}` has type {}, not a tensor, list, int, bool or dict",
            v.get_type().name()?
        )));
    }
    let t = v
        .call_method0("detach")?
        .call_method1("to", ("cpu",))?
        .call_method0("contiguous")?
        .call_method1("reshape", ((-1i64,),))?;
    let accept = Accept::Exactly(match t.getattr("dtype")?.str()?.to_string().as_str() {
        "torch.float32" => DType::F32,
        "torch.float64" => DType::F64,
        "torch.uint8" => DType::U8,
        other => {
            return Err(state_err(format!(
                "entry `{name}` has dtype {other}; expected float32, float64 or uint8"
            )));
        }
    });
    let span = device::span_of(&t, role, accept)?;
    // SAFETY: `span` comes from `t`, alive until the end of this function, and each arm
    // reads the element type of the span's dtype.
    Ok(unsafe {
        match span.dtype {
            DType::F32 => StateValue::F32(elements(&span)),
            DType::F64 => StateValue::F64(elements(&span)),
            DType::U8 => StateValue::U8(elements(&span)),
            // `span_of` accepted only the dtypes above.
            DType::U32 => {
                return Err(state_err(format!(
                    "entry `{name}` has dtype uint32; expected float32, float64 or uint8"
                )));
            }
        }
    })
}
