//! Sharded optimizer state (ZeRO stage 1): which contiguous range of the parameter arena each
//! rank of a data-parallel group steps and holds the optimizer state of, and the conversions
//! between the state of those ranges and the whole state a checkpoint holds.
//!
//! The ranges are cut at multiples of [`ALIGN`] elements: rank `r` owns `[r·c, (r + 1)·c)`
//! (clipped to the arena) with `c` the smallest multiple of [`ALIGN`] that is at least
//! `⌈P / W⌉`, so every rank but the last ones holds exactly `c` elements. A range is cut again
//! where the arena's optimizer parts (the parameter groups) change, into [`Piece`]s; each rank's
//! optimizer steps its pieces as tensors of their own.
//!
//! A state saved by a rank names its tensors by piece (`m.0`, `m.1`, … over its pieces);
//! [`merge`] joins every rank's into the state of the whole arena, named by part exactly as
//! an unsharded optimizer names it, and [`slice()`] cuts a whole state into one rank's.

use std::ops::Range;

use ire_core::collective::BufMut;
use ire_core::state::{StateDict, StateEntry, StateValue};
use ire_core::{Collective, Error, Result};

/// Shard boundaries are multiples of this many elements (whole 32-bit words of a bit-packed
/// mask, and 256-byte aligned `f32` ranges).
pub const ALIGN: usize = 64;

/// A run of the arena inside one optimizer part: `len` elements from `offset` in part `part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the part (parameter-group run) of the whole arena.
    pub part: usize,
    /// First element, counted from the start of the part.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

/// How the arena's parts are shared out over the ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    /// Elements of each part of the whole arena, in order.
    pub parts: Vec<usize>,
    /// Elements per rank before clipping (a multiple of [`ALIGN`]).
    pub chunk: usize,
    /// Each rank's range of the arena.
    pub ranges: Vec<Range<usize>>,
    /// Each rank's pieces, in arena order.
    pub pieces: Vec<Vec<Piece>>,
}

impl ShardLayout {
    /// The layout of an arena of `parts` over `world` ranks (`world ≥ 1`).
    pub fn new(parts: &[usize], world: usize) -> Self {
        let n: usize = parts.iter().sum();
        let world = world.max(1);
        let chunk = n.div_ceil(world).div_ceil(ALIGN).max(1) * ALIGN;
        let ranges: Vec<Range<usize>> = (0..world)
            .map(|r| (r * chunk).min(n)..((r + 1) * chunk).min(n))
            .collect();
        let pieces = ranges.iter().map(|r| pieces_of(parts, r)).collect();
        ShardLayout {
            parts: parts.to_vec(),
            chunk,
            ranges,
            pieces,
        }
    }

    /// Elements of the whole arena.
    pub fn len(&self) -> usize {
        self.parts.iter().sum()
    }

    /// Whether the arena is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part lengths that cut the whole arena into: what lies before `rank`'s range, each
    /// of its pieces, what lies after (for `Backend::with_parts`; its pieces are parts
    /// `1..=pieces.len()`).
    pub fn cut_for(&self, rank: usize) -> Vec<usize> {
        let r = &self.ranges[rank];
        let mut lens = vec![r.start];
        lens.extend(self.pieces[rank].iter().map(|p| p.len));
        lens.push(self.len() - r.end);
        lens
    }
}

/// The pieces of `range` in an arena cut into `parts`.
fn pieces_of(parts: &[usize], range: &Range<usize>) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut start = 0;
    for (part, &len) in parts.iter().enumerate() {
        let (lo, hi) = (range.start.max(start), range.end.min(start + len));
        if lo < hi {
            out.push(Piece {
                part,
                offset: lo - start,
                len: hi - lo,
            });
        }
        start += len;
    }
    out
}

fn state_error(what: String) -> Error {
    Error::State(format!("sharded optimizer state: {what}"))
}

/// `name` as `prefix.index`, when it has that form.
fn indexed(name: &str) -> Option<(&str, usize)> {
    let (prefix, index) = name.rsplit_once('.')?;
    Some((prefix, index.parse().ok()?))
}

fn is_tensor(v: &StateValue) -> bool {
    matches!(
        v,
        StateValue::F32(_) | StateValue::F64(_) | StateValue::U8(_)
    )
}

fn tensor_len(v: &StateValue) -> usize {
    match v {
        StateValue::F32(x) => x.len(),
        StateValue::F64(x) => x.len(),
        StateValue::U8(x) => x.len(),
        _ => 0,
    }
}

/// Elements `r` of a tensor value.
fn sub(v: &StateValue, r: Range<usize>) -> StateValue {
    match v {
        StateValue::F32(x) => StateValue::F32(x[r].to_vec()),
        StateValue::F64(x) => StateValue::F64(x[r].to_vec()),
        StateValue::U8(x) => StateValue::U8(x[r].to_vec()),
        other => other.clone(),
    }
}

/// Appends tensor `v` to tensor `acc` (same type, checked).
fn append(acc: &mut StateValue, v: &StateValue, name: &str) -> Result<()> {
    match (acc, v) {
        (StateValue::F32(a), StateValue::F32(b)) => a.extend_from_slice(b),
        (StateValue::F64(a), StateValue::F64(b)) => a.extend_from_slice(b),
        (StateValue::U8(a), StateValue::U8(b)) => a.extend_from_slice(b),
        _ => {
            return Err(state_error(format!(
                "`{name}` has different types on two ranks"
            )));
        }
    }
    Ok(())
}

/// The bytes of the tensors of a state (nested states included): what an optimizer holding
/// it keeps in memory.
pub fn tensor_bytes(s: &StateDict) -> u64 {
    s.entries
        .iter()
        .map(|e| match &e.value {
            StateValue::F32(x) => 4 * x.len() as u64,
            StateValue::F64(x) => 8 * x.len() as u64,
            StateValue::U8(x) => x.len() as u64,
            StateValue::Nested(n) => tensor_bytes(n),
            _ => 0,
        })
        .sum()
}

/// Joins the states of every rank (`states[r]` saved by rank `r` over its pieces) into the
/// state of the whole arena, named by part as an unsharded optimizer names it: tensors
/// `prefix.i` are the concatenation of their pieces, `sizes` counts the whole parts, other
/// per-tensor counters take the value of the part's first piece; everything else is rank 0's.
pub fn merge(layout: &ShardLayout, states: &[StateDict]) -> Result<StateDict> {
    let with: Vec<(&StateDict, &[Piece])> = states
        .iter()
        .zip(&layout.pieces)
        .filter(|(_, p)| !p.is_empty())
        .map(|(s, p)| (s, p.as_slice()))
        .collect();
    match with.first() {
        Some(&(template, _)) => merge_in(layout, template, &with),
        None => states
            .first()
            .cloned()
            .ok_or_else(|| state_error("no state".into())),
    }
}

fn merge_in(
    layout: &ShardLayout,
    template: &StateDict,
    ranks: &[(&StateDict, &[Piece])],
) -> Result<StateDict> {
    let mut out = StateDict {
        format_version: template.format_version,
        optimizer: template.optimizer.clone(),
        entries: Vec::new(),
    };
    let n_parts = layout.parts.len();
    for e in &template.entries {
        let value = match (&e.value, indexed(&e.name)) {
            (v, Some((prefix, i))) if is_tensor(v) => {
                if i != 0 {
                    continue;
                }
                for part in 0..n_parts {
                    let mut acc: Option<StateValue> = None;
                    for (s, pieces) in ranks {
                        for (k, _) in pieces.iter().enumerate().filter(|(_, p)| p.part == part) {
                            let name = format!("{prefix}.{k}");
                            let v = s.get(&name)?;
                            match &mut acc {
                                None => acc = Some(v.clone()),
                                Some(a) => append(a, v, &name)?,
                            }
                        }
                    }
                    let v = acc.ok_or_else(|| state_error(format!("no piece of part {part}")))?;
                    out.entries.push(StateEntry {
                        name: format!("{prefix}.{part}"),
                        value: v,
                    });
                }
                continue;
            }
            (StateValue::U64s(t), _) if t.is_empty() => StateValue::U64s(Vec::new()),
            (StateValue::U64s(_), _) => {
                let mut per_part = vec![None::<u64>; n_parts];
                for (s, pieces) in ranks {
                    let v = s.get_u64s(&e.name)?;
                    if v.len() != pieces.len() {
                        return Err(state_error(format!(
                            "`{}` has {} values for {} pieces",
                            e.name,
                            v.len(),
                            pieces.len()
                        )));
                    }
                    for (p, &x) in pieces.iter().zip(v) {
                        let slot = &mut per_part[p.part];
                        *slot = Some(match (e.name == "sizes", *slot) {
                            (true, Some(sum)) => sum + x,
                            (false, Some(first)) => first,
                            (_, None) => x,
                        });
                    }
                }
                StateValue::U64s(per_part.into_iter().map(|x| x.unwrap_or(0)).collect())
            }
            (StateValue::Nested(t), _) => {
                let nested: Vec<(&StateDict, &[Piece])> = ranks
                    .iter()
                    .map(|(s, p)| Ok((s.get_nested(&e.name)?, *p)))
                    .collect::<Result<_>>()?;
                StateValue::Nested(merge_in(layout, t, &nested)?)
            }
            (v, _) => v.clone(),
        };
        out.entries.push(StateEntry {
            name: e.name.clone(),
            value,
        });
    }
    Ok(out)
}

/// Cuts the state of the whole arena (`whole`, as an unsharded optimizer saved it) into the
/// state of `pieces`, named by piece: the inverse of [`merge`] for one rank. A tensor of the
/// wrong length is an error naming it.
pub fn slice(layout: &ShardLayout, whole: &StateDict, pieces: &[Piece]) -> Result<StateDict> {
    let mut out = StateDict {
        format_version: whole.format_version,
        optimizer: whole.optimizer.clone(),
        entries: Vec::new(),
    };
    for e in &whole.entries {
        let value = match (&e.value, indexed(&e.name)) {
            (v, Some((prefix, i))) if is_tensor(v) => {
                if i != 0 {
                    continue;
                }
                for (k, p) in pieces.iter().enumerate() {
                    let name = format!("{prefix}.{}", p.part);
                    let t = whole.get(&name)?;
                    let (len, full) = (tensor_len(t), layout.parts[p.part]);
                    let v = match len {
                        0 => sub(t, 0..0),
                        l if l == full => sub(t, p.offset..p.offset + p.len),
                        l => {
                            return Err(state_error(format!(
                                "`{name}` has {l} elements, the part has {full}"
                            )));
                        }
                    };
                    out.entries.push(StateEntry {
                        name: format!("{prefix}.{k}"),
                        value: v,
                    });
                }
                continue;
            }
            (StateValue::U64s(t), _) if t.is_empty() => StateValue::U64s(Vec::new()),
            (StateValue::U64s(t), _) => {
                if t.len() != layout.parts.len() {
                    return Err(state_error(format!(
                        "`{}` has {} values for {} parts",
                        e.name,
                        t.len(),
                        layout.parts.len()
                    )));
                }
                StateValue::U64s(
                    pieces
                        .iter()
                        .map(|p| {
                            if e.name == "sizes" {
                                p.len as u64
                            } else {
                                t[p.part]
                            }
                        })
                        .collect(),
                )
            }
            (StateValue::Nested(t), _) => StateValue::Nested(slice(layout, t, pieces)?),
            (v, _) => v.clone(),
        };
        out.entries.push(StateEntry {
            name: e.name.clone(),
            value,
        });
    }
    Ok(out)
}

/// Every rank's `bytes`, in rank order, on every rank (two all-gathers: the lengths, then the
/// bytes packed four to a `u32` and padded to the longest).
pub fn gather_bytes(comm: &dyn Collective, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let w = comm.world_size();
    let mut lens = vec![0u64; w];
    comm.all_gather((&[bytes.len() as u64][..]).into(), BufMut::U64(&mut lens))?;
    let words = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(4))
        .max()
        .unwrap_or(0);
    let mut mine = vec![0u32; words];
    for (i, c) in bytes.chunks(4).enumerate() {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        mine[i] = u32::from_le_bytes(b);
    }
    let mut all = vec![0u32; words * w];
    comm.all_gather(mine.as_slice().into(), BufMut::U32(&mut all))?;
    Ok(lens
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            let b: Vec<u8> = all[r * words..(r + 1) * words]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            b[..l as usize].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_are_aligned_and_cover_the_arena_in_pieces_of_its_parts() {
        let l = ShardLayout::new(&[100, 30, 200], 3);
        // ⌈330 / 3⌉ = 110, rounded up to 128.
        assert_eq!(l.chunk, 128);
        assert_eq!(l.ranges, [0..128, 128..256, 256..330]);
        assert_eq!(
            l.pieces[0],
            [
                Piece {
                    part: 0,
                    offset: 0,
                    len: 100
                },
                Piece {
                    part: 1,
                    offset: 0,
                    len: 28
                }
            ]
        );
        assert_eq!(l.cut_for(1), [128, 2, 126, 74]);
        let small = ShardLayout::new(&[10], 3);
        assert_eq!(small.ranges, [0..10, 10..10, 10..10]);
        assert!(small.pieces[2].is_empty());
    }

    #[test]
    fn slicing_then_merging_gives_the_whole_state_back() {
        let parts = [100usize, 30, 200];
        let mut whole = StateDict::new("ire");
        whole.put("t", StateValue::U64(7));
        whole.put("sizes", StateValue::U64s(vec![100, 30, 200]));
        for (i, &n) in parts.iter().enumerate() {
            whole.put(
                format!("h.{i}"),
                StateValue::F32((0..n).map(|x| (x + 1000 * i) as f32).collect()),
            );
        }
        whole.put("mask.0", StateValue::U8(vec![1; 100]));
        whole.put("mask.1", StateValue::U8(Vec::new()));
        whole.put("mask.2", StateValue::U8(vec![0; 200]));
        let mut base = StateDict::new("adamw");
        base.put("tensor_steps", StateValue::U64s(vec![7, 7, 7]));
        base.put("m.0", StateValue::F32(vec![0.5; 100]));
        base.put("m.1", StateValue::F32(vec![0.25; 30]));
        base.put("m.2", StateValue::F32(vec![0.125; 200]));
        whole.put("base", StateValue::Nested(base));
        let l = ShardLayout::new(&parts, 3);
        let shards: Vec<StateDict> = l
            .pieces
            .iter()
            .map(|p| slice(&l, &whole, p).unwrap())
            .collect();
        assert_eq!(shards[1].get_u64s("sizes").unwrap(), [2, 126]);
        assert_eq!(merge(&l, &shards).unwrap(), whole);
        let bad = slice(&ShardLayout::new(&[100, 31, 200], 2), &whole, &[]);
        assert!(bad.is_ok());
        let wrong = ShardLayout::new(&[100, 31, 199], 2);
        let e = slice(&wrong, &whole, &wrong.pieces[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`h.1` has 30 elements, the part has 31"), "{e}");
    }
}
