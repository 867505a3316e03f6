//! Optimizer state as named entries: what `save` produces and `load` checks.
//!
//! A [`StateDict`] is plain data; with the `serde` feature it (de)serializes with any serde
//! format. Loading is all-or-nothing: every optimizer validates every entry (presence, type,
//! length, format version, no extras) before it changes anything.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::scalar::Element;

/// Version of the state layout; bumped on any incompatible change.
pub const STATE_FORMAT_VERSION: u32 = 2;

/// One value of an optimizer's state.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StateValue {
    /// A counter (step number).
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Counters, one per tensor (steps each tensor has taken).
    U64s(Vec<u64>),
    /// A tensor of `f32`.
    F32(Vec<f32>),
    /// A tensor of `f64`.
    F64(Vec<f64>),
    /// A tensor of bytes (masks).
    U8(Vec<u8>),
    /// The state of a wrapped optimizer.
    Nested(StateDict),
}

impl StateValue {
    fn kind(&self) -> &'static str {
        match self {
            StateValue::U64(_) => "u64",
            StateValue::Bool(_) => "bool",
            StateValue::U64s(_) => "u64 list",
            StateValue::F32(_) => "f32 tensor",
            StateValue::F64(_) => "f64 tensor",
            StateValue::U8(_) => "u8 tensor",
            StateValue::Nested(_) => "nested state",
        }
    }
}

/// A named value.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StateEntry {
    /// Entry name, e.g. `m.3` (first moment of tensor 3).
    pub name: String,
    /// Its value.
    pub value: StateValue,
}

/// The saved state of one optimizer.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StateDict {
    /// [`STATE_FORMAT_VERSION`] at save time.
    pub format_version: u32,
    /// Which optimizer wrote it (`sgd`, `adamw`, `sam`, `ire`, or a user's name).
    pub optimizer: String,
    /// The entries, in the order written.
    pub entries: Vec<StateEntry>,
}

impl StateValue {
    /// Wraps a host tensor of any element type.
    pub fn tensor<E: Element>(v: Vec<E>) -> StateValue {
        let any: Box<dyn Any> = Box::new(v);
        let any = match any.downcast::<Vec<f32>>() {
            Ok(v) => return StateValue::F32(*v),
            Err(a) => a,
        };
        let any = match any.downcast::<Vec<f64>>() {
            Ok(v) => return StateValue::F64(*v),
            Err(a) => a,
        };
        let any = match any.downcast::<Vec<u8>>() {
            Ok(v) => return StateValue::U8(*v),
            Err(a) => a,
        };
        match any.downcast::<Vec<u32>>() {
            Ok(v) => StateValue::U64s(v.iter().map(|&x| u64::from(x)).collect()),
            // Every `Element` is one of the four types above (the trait is sealed).
            Err(_) => StateValue::U8(Vec::new()),
        }
    }

    /// The tensor this value holds, if it is a tensor of `E`.
    pub fn as_tensor<E: Element>(&self) -> Option<&[E]> {
        let v: &dyn Any = match self {
            StateValue::F32(v) => v,
            StateValue::F64(v) => v,
            StateValue::U8(v) => v,
            _ => return None,
        };
        v.downcast_ref::<Vec<E>>().map(Vec::as_slice)
    }
}

impl StateDict {
    /// An empty dict for `optimizer`, current format version.
    pub fn new(optimizer: &str) -> Self {
        StateDict {
            format_version: STATE_FORMAT_VERSION,
            optimizer: optimizer.into(),
            entries: Vec::new(),
        }
    }

    /// Adds an entry.
    pub fn put(&mut self, name: impl Into<String>, value: StateValue) {
        self.entries.push(StateEntry {
            name: name.into(),
            value,
        });
    }

    /// Downloads `bufs` as entries `prefix.0`, `prefix.1`, ...
    pub fn put_tensors<B: Backend, E: Element>(
        &mut self,
        b: &B,
        prefix: &str,
        bufs: &[B::Buffer<E>],
    ) -> Result<()> {
        for (i, buf) in bufs.iter().enumerate() {
            let v = b.to_vec(buf)?;
            self.put(format!("{prefix}.{i}"), StateValue::tensor(v));
        }
        Ok(())
    }

    /// The value named `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&StateValue> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.value)
            .ok_or_else(|| Error::State(format!("{}: missing entry `{name}`", self.optimizer)))
    }

    /// A `u64` entry.
    pub fn get_u64(&self, name: &str) -> Result<u64> {
        match self.get(name)? {
            StateValue::U64(x) => Ok(*x),
            v => Err(self.wrong_type(name, "u64", v)),
        }
    }

    /// A list of counters.
    pub fn get_u64s(&self, name: &str) -> Result<&[u64]> {
        match self.get(name)? {
            StateValue::U64s(x) => Ok(x),
            v => Err(self.wrong_type(name, "u64 list", v)),
        }
    }

    /// A `bool` entry.
    pub fn get_bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            StateValue::Bool(x) => Ok(*x),
            v => Err(self.wrong_type(name, "bool", v)),
        }
    }

    /// A nested dict entry.
    pub fn get_nested(&self, name: &str) -> Result<&StateDict> {
        match self.get(name)? {
            StateValue::Nested(x) => Ok(x),
            v => Err(self.wrong_type(name, "nested state", v)),
        }
    }

    /// A tensor entry of type `E` and exactly `len` elements.
    pub fn get_tensor<E: Element>(&self, name: &str, len: usize) -> Result<&[E]> {
        let v = self.get(name)?;
        let t = v
            .as_tensor::<E>()
            .ok_or_else(|| self.wrong_type(name, E::DTYPE.name(), v))?;
        if t.len() != len {
            return Err(Error::State(format!(
                "{}: entry `{name}` has {} elements, expected {len}",
                self.optimizer,
                t.len()
            )));
        }
        Ok(t)
    }

    /// Uploads tensors `prefix.0 .. prefix.{sizes.len()-1}` into NEW buffers (nothing existing
    /// is touched, so a failure leaves the optimizer as it was).
    pub fn load_tensors<B: Backend, E: Element>(
        &self,
        b: &B,
        prefix: &str,
        sizes: &[usize],
    ) -> Result<Vec<B::Buffer<E>>> {
        let mut out = Vec::with_capacity(sizes.len());
        for (i, &n) in sizes.iter().enumerate() {
            out.push(b.alloc_from(self.get_tensor::<E>(&format!("{prefix}.{i}"), n)?)?);
        }
        Ok(out)
    }

    /// Tensor sizes `prefix.0, prefix.1, ...` as saved (stops at the first missing index).
    pub fn tensor_sizes(&self, prefix: &str) -> Vec<usize> {
        let mut sizes = Vec::new();
        loop {
            let name = format!("{prefix}.{}", sizes.len());
            match self.entries.iter().find(|e| e.name == name) {
                Some(e) => sizes.push(match &e.value {
                    StateValue::F32(v) => v.len(),
                    StateValue::F64(v) => v.len(),
                    StateValue::U8(v) => v.len(),
                    _ => 0,
                }),
                None => return sizes,
            }
        }
    }

    /// Checks optimizer name and format version, and that the entry names are exactly
    /// `expected` (no missing, no extra, no duplicate).
    pub fn expect(&self, optimizer: &str, expected: &[String]) -> Result<()> {
        if self.format_version != STATE_FORMAT_VERSION {
            return Err(Error::State(format!(
                "{}: format version {} (this build reads version {STATE_FORMAT_VERSION})",
                self.optimizer, self.format_version
            )));
        }
        if self.optimizer != optimizer {
            return Err(Error::State(format!(
                "state was saved by optimizer `{}`, not `{optimizer}`",
                self.optimizer
            )));
        }
        for name in expected {
            self.get(name)?;
        }
        for (i, e) in self.entries.iter().enumerate() {
            if !expected.contains(&e.name) {
                return Err(Error::State(format!(
                    "{optimizer}: unexpected entry `{}`",
                    e.name
                )));
            }
            if self.entries[..i].iter().any(|p| p.name == e.name) {
                return Err(Error::State(format!(
                    "{optimizer}: duplicate entry `{}`",
                    e.name
                )));
            }
        }
        Ok(())
    }

    fn wrong_type(&self, name: &str, want: &str, got: &StateValue) -> Error {
        Error::State(format!(
            "{}: entry `{name}` is a {}, expected {want}",
            self.optimizer,
            got.kind()
        ))
    }
}

/// Names `prefix.0 .. prefix.{n-1}`.
pub fn indexed_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}.{i}")).collect()
}
