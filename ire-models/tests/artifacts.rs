//! Run artifacts: checkpoints (round trip, every kind of damage, interrupted writes), the blob
//! encoding, metrics JSON lines, plots and safetensors export.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use ire_models::artifacts::checkpoint::{self, Checkpoint, FORMAT_VERSION, MAGIC};
use ire_models::artifacts::metrics::{self, MetricsWriter};
use ire_models::artifacts::plot::{self, Series};
use ire_models::artifacts::{ArtifactError, safetensors as st};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A fresh, empty folder under the system's temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("ire-artifacts-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn sample() -> Checkpoint {
    let state = encode_sample();
    Checkpoint {
        meta: r#"{"step":1200,"model":"résnet-20 ✓","lr":0.1}"#.to_string(),
        tensors: vec![
            (
                "params".into(),
                (0..300).map(|i| (i as f32 * 0.37).sin()).collect(),
            ),
            ("empty".into(), vec![]),
            (
                "θ/層.weight 🚀".into(),
                vec![-0.0, f32::MIN_POSITIVE, f32::from_bits(1), f32::INFINITY],
            ),
            (
                "nan-payload".into(),
                vec![f32::from_bits(0x7fc1_2345), f32::from_bits(0xffa0_0001)],
            ),
            (String::new(), vec![1.5]),
        ],
        blobs: vec![
            ("optimizer".into(), state),
            ("empty-blob".into(), vec![]),
            ("ünïcode".into(), vec![0, 255, 7]),
        ],
    }
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.meta, b.meta);
    assert_eq!(a.blobs, b.blobs);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ((na, va), (nb, vb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(na, nb);
        assert_eq!(bits(va), bits(vb), "tensor {na}");
    }
}

#[test]
fn checkpoint_round_trip() {
    let dir = scratch("ck-round-trip");
    let path = dir.join("ck.bin");
    let ck = sample();
    checkpoint::write_atomic(&path, &ck).unwrap();
    let back = checkpoint::read(&path).unwrap();
    assert_same(&ck, &back);
    assert_eq!(back.tensor("empty"), Some(&[][..]));
    assert_eq!(back.blob("ünïcode"), Some(&[0u8, 255, 7][..]));
    assert_eq!(back.tensor("missing"), None);

    // Overwriting replaces; an empty checkpoint is fine too.
    checkpoint::write_atomic(&path, &Checkpoint::default()).unwrap();
    assert_eq!(checkpoint::read(&path).unwrap(), Checkpoint::default());

    // A folder that does not exist yet is created.
    let nested = dir.join("a/b/ck.bin");
    checkpoint::write_atomic(&nested, &ck).unwrap();
    assert_same(&ck, &checkpoint::read(&nested).unwrap());

    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(&*dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn checkpoint_rejects_duplicate_names_and_keeps_the_old_file() {
    let dir = scratch("ck-dup");
    let path = dir.join("ck.bin");
    checkpoint::write_atomic(&path, &sample()).unwrap();
    let bad = Checkpoint {
        meta: "{}".into(),
        tensors: vec![("w".into(), vec![1.0]), ("w".into(), vec![2.0])],
        blobs: vec![],
    };
    let err = checkpoint::write_atomic(&path, &bad).unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("\"w\""), "{err}");
    assert_same(&sample(), &checkpoint::read(&path).unwrap());
    // A tensor and a blob may share a name.
    let ok = Checkpoint {
        meta: String::new(),
        tensors: vec![("x".into(), vec![1.0])],
        blobs: vec![("x".into(), vec![1])],
    };
    checkpoint::write_atomic(&path, &ok).unwrap();
    assert_eq!(checkpoint::read(&path).unwrap(), ok);
}

/// Writes `bytes` as a damaged copy, reads it back, and checks that the error names the file.
fn read_damaged(dir: &Path, bytes: &[u8]) -> ArtifactError {
    let path = dir.join("damaged.ckpt");
    fs::write(&path, bytes).unwrap();
    let err = checkpoint::read(&path).expect_err("damaged checkpoint must not read");
    assert_eq!(err.path(), Some(path.as_path()));
    assert!(err.to_string().contains("damaged.ckpt"), "{err}");
    err
}

/// Like [`read_damaged`] without the file (`read` is `fs::read` + `parse`), for the exhaustive
/// loops; every 97th case still goes through a real file.
fn parse_damaged(dir: &Path, case: usize, bytes: &[u8]) -> ArtifactError {
    if case.is_multiple_of(97) {
        return read_damaged(dir, bytes);
    }
    let path = dir.join("damaged.ckpt");
    let err = checkpoint::parse(&path, bytes).expect_err("damaged checkpoint must not parse");
    assert_eq!(err.path(), Some(path.as_path()));
    assert!(err.to_string().contains("damaged.ckpt"), "{err}");
    err
}

#[test]
fn checkpoint_truncated_at_every_offset() {
    let dir = scratch("ck-trunc");
    let path = dir.join("ck.bin");
    checkpoint::write_atomic(&path, &sample()).unwrap();
    let good = fs::read(&path).unwrap();
    for cut in 0..good.len() {
        let err = parse_damaged(&dir, cut, &good[..cut]);
        assert!(
            matches!(err, ArtifactError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn checkpoint_every_flipped_byte_is_caught() {
    let dir = scratch("ck-flip");
    let path = dir.join("ck.bin");
    checkpoint::write_atomic(&path, &sample()).unwrap();
    let good = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    for at in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= mask;
            let err = parse_damaged(&dir, at, &bad);
            match at {
                0..8 => assert!(matches!(err, ArtifactError::BadMagic { .. }), "{at}: {err}"),
                8..12 => assert!(
                    matches!(err, ArtifactError::UnsupportedVersion { .. }),
                    "{at}: {err}"
                ),
                // Past the header: only the data checksum can tell.
                _ if at >= 28 + header_len => {
                    assert!(matches!(err, ArtifactError::Corrupt { .. }), "{at}: {err}");
                    assert!(err.to_string().contains("data checksum"), "{at}: {err}");
                }
                _ => {}
            }
        }
    }
}

#[test]
fn checkpoint_wrong_magic_future_version_trailing_bytes() {
    let dir = scratch("ck-kinds");
    let path = dir.join("ck.bin");
    checkpoint::write_atomic(&path, &sample()).unwrap();
    let good = fs::read(&path).unwrap();

    let mut zip = good.clone();
    zip[..4].copy_from_slice(b"PK\x03\x04");
    assert!(matches!(
        read_damaged(&dir, &zip),
        ArtifactError::BadMagic { .. }
    ));
    let text = read_damaged(&dir, b"{\"not\": \"a checkpoint\"}\n");
    assert!(matches!(text, ArtifactError::BadMagic { .. }));
    assert!(matches!(
        read_damaged(&dir, b"x"),
        ArtifactError::BadMagic { .. }
    ));
    assert!(matches!(
        read_damaged(&dir, b""),
        ArtifactError::Truncated { .. }
    ));

    let mut future = good.clone();
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = read_damaged(&dir, &future);
    assert!(
        matches!(err, ArtifactError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");

    for extra in [1usize, 3, 1000] {
        let mut long = good.clone();
        long.extend(std::iter::repeat_n(0xab, extra));
        let err = read_damaged(&dir, &long);
        assert!(
            matches!(err, ArtifactError::TrailingBytes { extra: e, .. } if e == extra as u64),
            "{err}"
        );
    }
    // Two checkpoints glued together are trailing bytes too.
    let mut twice = good.clone();
    twice.extend_from_slice(&good);
    assert!(matches!(
        read_damaged(&dir, &twice),
        ArtifactError::TrailingBytes { .. }
    ));
}

/// A file whose header (with a valid header checksum) announces absurd lengths is refused
/// without allocating them.
#[test]
fn checkpoint_huge_lengths_are_bounded_by_the_file_size() {
    let dir = scratch("ck-huge");
    // Hand-built version-1 file: one tensor announcing 2^61 elements.
    let mut header = Vec::new();
    header.extend_from_slice(&2u64.to_le_bytes());
    header.extend_from_slice(b"{}");
    header.extend_from_slice(&1u64.to_le_bytes());
    header.push(1);
    header.extend_from_slice(&1u32.to_le_bytes());
    header.push(b'w');
    header.extend_from_slice(&(1u64 << 61).to_le_bytes());
    let mut file = Vec::new();
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    let crc = crc32(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(&[0; 16]);
    let err = read_damaged(&dir, &file);
    assert!(matches!(err, ArtifactError::Truncated { .. }), "{err}");

    // An entry count far beyond what the header can hold.
    let mut many = header.clone();
    many[10..18].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut file = Vec::new();
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&(many.len() as u64).to_le_bytes());
    file.extend_from_slice(&many);
    let crc = crc32(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let err = read_damaged(&dir, &file);
    assert!(matches!(err, ArtifactError::Corrupt { .. }), "{err}");

    // A header length near u64::MAX.
    let mut prelude = Vec::new();
    prelude.extend_from_slice(&MAGIC);
    prelude.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    prelude.extend_from_slice(&0u32.to_le_bytes());
    prelude.extend_from_slice(&(u64::MAX - 10).to_le_bytes());
    prelude.extend_from_slice(&[0; 40]);
    assert!(matches!(
        read_damaged(&dir, &prelude),
        ArtifactError::Truncated { .. }
    ));
}

/// Plain bitwise CRC-32 (IEEE), written out so the test does not trust the library's own.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn checkpoint_checksum_is_crc32_of_everything_before_it() {
    let dir = scratch("ck-crc");
    let path = dir.join("ck.bin");
    checkpoint::write_atomic(&path, &sample()).unwrap();
    let b = fs::read(&path).unwrap();
    let n = b.len();
    assert_eq!(
        crc32(&b[..n - 4]),
        u32::from_le_bytes(b[n - 4..].try_into().unwrap())
    );
    let h = 24 + u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    assert_eq!(
        crc32(&b[..h]),
        u32::from_le_bytes(b[h..h + 4].try_into().unwrap())
    );
}

#[test]
fn interrupted_write_leaves_the_previous_checkpoint_readable() {
    let dir = scratch("ck-interrupted");
    let path = dir.join("ck.bin");
    let first = sample();
    checkpoint::write_atomic(&path, &first).unwrap();

    // A crash mid-write leaves a partial temporary file beside the checkpoint.
    let second = Checkpoint {
        meta: "{\"step\":2}".into(),
        ..sample()
    };
    let other = dir.join("other.bin");
    checkpoint::write_atomic(&other, &second).unwrap();
    let partial = fs::read(&other).unwrap();
    let leftover = dir.join(format!(".ck.bin.{}.0.tmp", std::process::id()));
    fs::write(&leftover, &partial[..partial.len() / 2]).unwrap();
    let stranger = dir.join(".ck.bin.1.0.tmp");
    fs::write(&stranger, b"garbage").unwrap();

    assert_same(&first, &checkpoint::read(&path).unwrap());
    // The next write does not trip over the leftovers and does not touch them.
    checkpoint::write_atomic(&path, &second).unwrap();
    assert_same(&second, &checkpoint::read(&path).unwrap());
    assert_eq!(fs::read(&stranger).unwrap(), b"garbage");
    assert_eq!(fs::read(&leftover).unwrap().len(), partial.len() / 2);
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Phase {
    Warmup { steps: u32 },
    Main,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    step: u64,
    neg: i64,
    f32s: Vec<f32>,
    f64s: Vec<f64>,
    name: String,
    seed: Option<u128>,
    phase: Phase,
    pairs: Vec<(String, f64)>,
}

fn edge_f32() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        f32::EPSILON,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.1,
        1.0 / 3.0,
    ]
}

fn edge_f64() -> Vec<f64> {
    vec![
        0.0,
        -0.0,
        f64::from_bits(1),
        -f64::from_bits(0x000f_ffff_ffff_ffff),
        f64::MIN_POSITIVE,
        f64::EPSILON,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        0.1,
        1.0 / 3.0,
    ]
}

fn state() -> State {
    State {
        step: u64::MAX,
        neg: i64::MIN,
        f32s: edge_f32(),
        f64s: edge_f64(),
        name: "ire-κ ✓".into(),
        seed: Some(u128::MAX - 7),
        phase: Phase::Warmup { steps: 500 },
        pairs: vec![("lr".into(), 1e-3), ("".into(), -0.0)],
    }
}

fn encode_sample() -> Vec<u8> {
    checkpoint::encode(&state()).unwrap()
}

#[test]
fn encode_decode_is_bit_exact() {
    let s = state();
    let bytes = checkpoint::encode(&s).unwrap();
    let back: State = checkpoint::decode(&bytes).unwrap();
    assert_eq!(back.step, s.step);
    assert_eq!(back.neg, s.neg);
    assert_eq!(back.name, s.name);
    assert_eq!(back.seed, s.seed);
    assert_eq!(back.phase, s.phase);
    assert_eq!(bits(&back.f32s), bits(&s.f32s));
    let b64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b64(&back.f64s), b64(&s.f64s));
    assert_eq!(back.pairs[1].1.to_bits(), (-0.0f64).to_bits());
    // Compact: the 26 floats take their raw size plus a few bytes of framing.
    assert!(bytes.len() < 13 * 4 + 13 * 8 + 80, "{} bytes", bytes.len());

    // Through a checkpoint blob too.
    let dir = scratch("encode");
    let path = dir.join("ck.bin");
    let ck = Checkpoint {
        blobs: vec![("state".into(), bytes.clone())],
        ..Checkpoint::default()
    };
    checkpoint::write_atomic(&path, &ck).unwrap();
    let back: State =
        checkpoint::decode(checkpoint::read(&path).unwrap().blob("state").unwrap()).unwrap();
    assert_eq!(bits(&back.f32s), bits(&s.f32s));
}

#[test]
fn decode_rejects_bad_input_without_panicking() {
    let bytes = checkpoint::encode(&state()).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            checkpoint::decode::<State>(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    let err = checkpoint::decode::<State>(&long).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
    // Absurd lengths: a string or a vector "of 2^63 elements" in 10 bytes.
    let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(checkpoint::decode::<String>(&huge).is_err());
    assert!(checkpoint::decode::<Vec<u64>>(&huge).is_err());
    assert!(checkpoint::decode::<Vec<u8>>(&huge).is_err());
    for flip in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[flip] ^= 0xff;
        let _ = checkpoint::decode::<State>(&bad); // any result but a panic
    }
}

#[test]
fn metrics_write_append_read() {
    let dir = scratch("metrics");
    let path = dir.join("run/metrics.jsonl");
    {
        let mut w = MetricsWriter::create(&path, false).unwrap();
        assert_eq!(w.path(), path.as_path());
        for step in 0..3 {
            w.write(&json!({"step": step, "loss": 0.1 + 0.2, "tag": "ünï"}))
                .unwrap();
        }
        w.sync().unwrap();
        let err = w.write(&json!([1, 2])).unwrap_err();
        assert!(matches!(err, ArtifactError::InvalidInput { .. }), "{err}");
    }
    // Each line is on disk as soon as it is written.
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.ends_with('\n'));

    let recs = metrics::read_jsonl(&path).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2]["step"], 2);
    assert_eq!(
        recs[0]["loss"].as_f64().unwrap().to_bits(),
        (0.1f64 + 0.2).to_bits()
    );

    let mut w = MetricsWriter::create(&path, true).unwrap();
    w.write(&json!({"step": 3})).unwrap();
    w.write(&json!({"step": 4})).unwrap();
    drop(w);
    let steps: Vec<_> = metrics::read_jsonl(&path)
        .unwrap()
        .iter()
        .map(|r| r["step"].clone())
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 4]);

    // Without append the file starts over.
    let mut w = MetricsWriter::create(&path, false).unwrap();
    w.write(&json!({"step": 0, "fresh": true})).unwrap();
    drop(w);
    assert_eq!(
        metrics::read_jsonl(&path).unwrap(),
        vec![json!({"step": 0, "fresh": true})]
    );
}

#[test]
fn metrics_truncated_last_line_is_skipped_and_repaired() {
    let dir = scratch("metrics-crash");
    let path = dir.join("m.jsonl");
    let mut w = MetricsWriter::create(&path, false).unwrap();
    w.write(&json!({"step": 1})).unwrap();
    w.write(&json!({"step": 2})).unwrap();
    drop(w);
    // A crash in the middle of a line.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\": 3, \"lo").unwrap();
    drop(f);
    let recs = metrics::read_jsonl(&path).unwrap();
    assert_eq!(recs, vec![json!({"step": 1}), json!({"step": 2})]);

    // Appending after the crash starts on a fresh line.
    let mut w = MetricsWriter::create(&path, true).unwrap();
    w.write(&json!({"step": 3})).unwrap();
    drop(w);
    let recs = metrics::read_jsonl(&path).unwrap();
    assert_eq!(
        recs,
        vec![json!({"step": 1}), json!({"step": 2}), json!({"step": 3})]
    );

    // A file holding only a partial line.
    let only = dir.join("only.jsonl");
    fs::write(&only, b"{\"st").unwrap();
    assert!(metrics::read_jsonl(&only).unwrap().is_empty());
    let mut w = MetricsWriter::create(&only, true).unwrap();
    w.write(&json!({"a": 1})).unwrap();
    drop(w);
    assert_eq!(fs::read_to_string(&only).unwrap(), "{\"a\":1}\n");

    // A complete last line without its newline still counts; blank lines and CRLF are fine.
    let loose = dir.join("loose.jsonl");
    fs::write(&loose, b"{\"a\":1}\r\n\n  \n{\"a\":2}").unwrap();
    assert_eq!(
        metrics::read_jsonl(&loose).unwrap(),
        vec![json!({"a": 1}), json!({"a": 2})]
    );
    // Empty file.
    let empty = dir.join("empty.jsonl");
    fs::write(&empty, b"").unwrap();
    assert!(metrics::read_jsonl(&empty).unwrap().is_empty());
}

#[test]
fn metrics_malformed_line_names_the_line() {
    let dir = scratch("metrics-bad");
    let path = dir.join("m.jsonl");
    fs::write(&path, b"{\"step\":1}\n{\"step\":2,,}\n{\"step\":3}\n").unwrap();
    let err = metrics::read_jsonl(&path).unwrap_err();
    assert!(matches!(err, ArtifactError::Jsonl { line: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("m.jsonl") && msg.contains("line 2"), "{msg}");
    // A malformed last line that did end with its newline is an error, not a crash remnant.
    fs::write(&path, b"{\"step\":1}\n{\"step\n").unwrap();
    assert!(matches!(
        metrics::read_jsonl(&path),
        Err(ArtifactError::Jsonl { line: 2, .. })
    ));
    // A missing file names the file.
    let err = metrics::read_jsonl(&dir.join("nope.jsonl")).unwrap_err();
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}

fn curves() -> Vec<Series> {
    let gd = (0..200)
        .map(|i| (i as f64, 2.0 * (-(i as f64) / 40.0).exp() + 0.05))
        .collect();
    let mut ire: Vec<(f64, f64)> = (0..200)
        .map(|i| (i as f64, 2.0 * (-(i as f64) / 15.0).exp() + 0.01))
        .collect();
    ire[50].1 = f64::NAN;
    ire[51].1 = f64::INFINITY;
    ire[120].0 = f64::NEG_INFINITY;
    vec![
        Series {
            label: "GD".into(),
            points: gd,
        },
        Series {
            label: "IRE (κ = 2)".into(),
            points: ire,
        },
        Series {
            label: "empty".into(),
            points: vec![],
        },
        Series {
            label: "one point".into(),
            points: vec![(100.0, 1.0)],
        },
    ]
}

fn check_plot_files(paths: &[PathBuf], stem: &str) -> String {
    assert_eq!(paths.len(), 2);
    assert!(paths[0].ends_with(format!("{stem}.png")));
    assert!(paths[1].ends_with(format!("{stem}.svg")));
    let png = fs::read(&paths[0]).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 1000, "{} bytes", png.len());
    let svg = fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.contains("<svg"), "not an SVG");
    svg
}

#[test]
fn plots_png_and_svg() {
    let dir = scratch("plot");
    let paths = plot::plot_curves(
        &dir,
        "loss",
        "Training loss",
        "step",
        "loss",
        &curves(),
        false,
    )
    .unwrap();
    let svg = check_plot_files(&paths, "loss");
    if plot::font_available() {
        assert!(svg.contains("Training loss"), "title missing from the SVG");
        assert!(svg.contains("IRE (κ = 2)"), "legend missing from the SVG");
    }
    let paths = plot::plot_curves(
        &dir,
        "loss_log",
        "Loss (log)",
        "step",
        "loss",
        &curves(),
        true,
    )
    .unwrap();
    check_plot_files(&paths, "loss_log");

    // Nothing to draw at all, or only non-finite points, or a flat line: still two files.
    let paths = plot::plot_curves(&dir, "empty", "", "", "", &[], false).unwrap();
    check_plot_files(&paths, "empty");
    let junk = [Series {
        label: String::new(),
        points: vec![(f64::NAN, 1.0), (1.0, -1.0)],
    }];
    let paths = plot::plot_curves(&dir, "junk", "junk", "x", "y", &junk, true).unwrap();
    check_plot_files(&paths, "junk");
    let flat = [Series {
        label: "flat".into(),
        points: vec![(0.0, 3.0), (0.0, 3.0)],
    }];
    let paths =
        plot::plot_curves(&dir.join("new/folder"), "flat", "t", "x", "y", &flat, false).unwrap();
    check_plot_files(&paths, "flat");

    assert!(plot::plot_curves(&dir, "a/b", "t", "x", "y", &flat, false).is_err());
}

fn weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    vec![
        (
            "layer.0.weight".into(),
            vec![2, 3],
            vec![1.0, -2.0, 3.5, f32::from_bits(1), -0.0, 6.0],
        ),
        ("layer.0.bias".into(), vec![3], vec![0.1, 0.2, 0.3]),
        ("scale".into(), vec![], vec![f32::INFINITY]),
        ("none".into(), vec![0, 4], vec![]),
        (
            "embedding.ζ".into(),
            vec![4, 1, 2],
            (0..8).map(|i| i as f32 / 7.0).collect(),
        ),
    ]
}

#[test]
fn safetensors_round_trip_and_header() {
    let dir = scratch("safetensors");
    let path = dir.join("model.safetensors");
    let meta = vec![
        ("format".to_string(), "pt".to_string()),
        ("ire.step".to_string(), "1200".to_string()),
    ];
    st::export(&path, &weights(), &meta).unwrap();

    let mut want = weights();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got = st::import(&path).unwrap();
    assert_eq!(got.len(), want.len());
    for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
        assert_eq!((gn, gs), (wn, ws));
        assert_eq!(bits(gv), bits(wv), "{gn}");
    }
    assert_eq!(st::import_metadata(&path).unwrap(), meta);

    // The safetensors crate's own reader agrees.
    let bytes = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["ire.step"], "1200");
    assert_eq!(header["layer.0.weight"]["dtype"], "F32");
    assert_eq!(header["layer.0.weight"]["shape"], json!([2, 3]));
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), 5);
    let w = file.tensor("layer.0.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert_eq!(w.shape(), [2, 3]);
    assert_eq!(&w.data()[8..12], &3.5f32.to_le_bytes());
    assert_eq!(file.tensor("scale").unwrap().shape(), [] as [usize; 0]);

    // No metadata at all is fine; no temporary files are left.
    st::export(&dir.join("bare.safetensors"), &weights(), &[]).unwrap();
    assert!(
        st::import_metadata(&dir.join("bare.safetensors"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(fs::read_dir(&*dir).unwrap().count(), 2);
}

#[test]
fn safetensors_files_of_the_same_weights_are_the_same_bytes() {
    // The metadata goes through a HashMap, whose order changes with every map: eight exports
    // of three keys would almost surely see two orders if the writer did not sort them.
    let dir = scratch("safetensors-bytes");
    let meta: Vec<(String, String)> = [("optimizer", "admire"), ("step", "12"), ("model", "m")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let first = dir.join("0.safetensors");
    st::export(&first, &weights(), &meta).unwrap();
    let bytes = fs::read(&first).unwrap();
    for i in 1..8 {
        let path = dir.join(format!("{i}.safetensors"));
        st::export(&path, &weights(), &meta).unwrap();
        assert!(fs::read(&path).unwrap() == bytes, "export {i} differs");
    }
    let mut sorted = meta.clone();
    sorted.sort();
    assert_eq!(st::import_metadata(&first).unwrap(), sorted);
    let header = String::from_utf8_lossy(&bytes[8..]).into_owned();
    assert!(
        header.starts_with(r#"{"__metadata__":{"model":"m","optimizer":"admire","step":"12"}"#),
        "{header}"
    );
}

#[test]
fn safetensors_bad_input() {
    let dir = scratch("safetensors-bad");
    let path = dir.join("w.safetensors");
    st::export(&path, &weights(), &[]).unwrap();
    let before = fs::read(&path).unwrap();

    let wrong_shape = vec![("w".to_string(), vec![2, 2], vec![1.0f32; 3])];
    let err = st::export(&path, &wrong_shape, &[]).unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidInput { .. }), "{err}");
    let overflow = vec![("w".to_string(), vec![usize::MAX, 2], vec![])];
    assert!(st::export(&path, &overflow, &[]).is_err());
    let dup = vec![
        ("w".to_string(), vec![1], vec![1.0]),
        ("w".to_string(), vec![1], vec![2.0]),
    ];
    assert!(st::export(&path, &dup, &[]).is_err());
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "a failed export must keep the old file"
    );

    // A truncated or foreign file is an error naming it.
    fs::write(&path, &before[..before.len() - 3]).unwrap();
    let err = st::import(&path).unwrap_err();
    assert!(err.to_string().contains("w.safetensors"), "{err}");
    fs::write(&path, b"hello").unwrap();
    assert!(st::import(&path).is_err());

    // Another dtype is refused by name.
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data).unwrap();
    let f64_file = safetensors::serialize([("doubles", view)], None).unwrap();
    fs::write(&path, f64_file).unwrap();
    let err = st::import(&path).unwrap_err();
    assert!(err.to_string().contains("doubles"), "{err}");
}
