//! Loaders on small files written here (well-formed, truncated, corrupt) and on the real
//! CIFAR-10 files of the shared data folder beside the repository and Debian's Fashion-MNIST
//! (each a skip when absent, a failure under `IRE_REQUIRE=data`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use ire_models::data::{
    Augment, BatchLoader, Cifar100Labels, DataError, Normalize, load_cifar10_bin,
    load_cifar100_bin, load_digits_csv, load_idx, load_image_folder,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ire-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| fill.wrapping_add((i % 251) as u8)));
    r
}

#[test]
fn cifar10_reads_records_and_rejects_bad_files() {
    let d = tmp("cifar10");
    let f = d.join("batch.bin");
    let mut bytes = cifar_record(3, 0);
    bytes.extend(cifar_record(9, 7));
    std::fs::write(&f, &bytes).unwrap();
    std::fs::write(d.join("batches.meta.txt"), "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n").unwrap();
    let ds = load_cifar10_bin(&[&f]).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels, [3, 9]);
    assert_eq!(ds.image(1)[0], 7);
    assert_eq!(ds.image(1)[1024], 7u8.wrapping_add((1024 % 251) as u8));
    assert_eq!(ds.class_names[9], "j");
    // Truncated: a partial record.
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_cifar10_bin(&[&f]).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("1 full records"), "{e}");
    // Corrupt: a label out of range.
    let mut bad = bytes.clone();
    bad[3073] = 12;
    std::fs::write(&f, &bad).unwrap();
    let e = load_cifar10_bin(&[&f]).unwrap_err();
    assert!(e.to_string().contains("label 12"), "{e}");
    // Missing and empty files.
    assert!(matches!(
        load_cifar10_bin(&[d.join("nope.bin")]),
        Err(DataError::Io { .. })
    ));
    std::fs::write(&f, b"").unwrap();
    assert!(matches!(
        load_cifar10_bin(&[&f]),
        Err(DataError::Truncated { .. })
    ));
}

#[test]
fn cifar100_fine_and_coarse() {
    let d = tmp("cifar100");
    let f = d.join("train.bin");
    let mut bytes = vec![4u8, 77];
    bytes.extend(vec![1u8; 3072]);
    std::fs::write(&f, &bytes).unwrap();
    assert_eq!(
        load_cifar100_bin(&f, Cifar100Labels::Fine).unwrap().labels,
        [77]
    );
    let coarse = load_cifar100_bin(&f, Cifar100Labels::Coarse).unwrap();
    assert_eq!((coarse.labels[0], coarse.num_classes), (4, 20));
    bytes[0] = 25;
    std::fs::write(&f, &bytes).unwrap();
    assert!(
        load_cifar100_bin(&f, Cifar100Labels::Fine).is_err(),
        "bad coarse label must be caught"
    );
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_raw_and_gzipped() {
    let d = tmp("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let (im, lb) = (d.join("images-idx3-ubyte"), d.join("labels-idx1-ubyte.gz"));
    std::fs::write(&im, idx(&[2, 3, 4], &pixels)).unwrap();
    std::fs::write(&lb, gz(&idx(&[2], &[5, 1]))).unwrap();
    let ds = load_idx(&im, &lb).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (2, 1, 3, 4));
    assert_eq!(ds.labels, [5, 1]);
    assert_eq!(ds.image(1), &pixels[12..]);
    // Truncated data, wrong magic, wrong count, corrupt gzip.
    std::fs::write(&im, idx(&[2, 3, 4], &pixels[..20])).unwrap();
    let e = load_idx(&im, &lb).unwrap_err();
    assert!(
        matches!(e, DataError::Truncated { .. }) && e.to_string().contains("promises 24"),
        "{e}"
    );
    let mut bad = idx(&[2, 3, 4], &pixels);
    bad[2] = 0x0D;
    std::fs::write(&im, bad).unwrap();
    assert!(
        load_idx(&im, &lb)
            .unwrap_err()
            .to_string()
            .contains("element type")
    );
    std::fs::write(&im, idx(&[3, 2, 4], &pixels)).unwrap();
    assert!(matches!(
        load_idx(&im, &lb),
        Err(DataError::Inconsistent(_))
    ));
    let mut g = gz(&idx(&[2], &[5, 1]));
    let n = g.len();
    g.truncate(n - 12);
    std::fs::write(&lb, g).unwrap();
    std::fs::write(&im, idx(&[2, 3, 4], &pixels)).unwrap();
    assert!(load_idx(&im, &lb).is_err());
}

#[test]
fn image_folder_png_and_jpeg() {
    let d = tmp("folder");
    for (class, shade) in [("cat", 10u8), ("dog", 200u8)] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        for k in 0..2u8 {
            let img = image::RgbImage::from_fn(4, 3, |x, y| {
                image::Rgb([shade, k * 50 + x as u8, y as u8])
            });
            img.save(d.join(class).join(format!("{k}.png"))).unwrap();
        }
    }
    let jpg = image::RgbImage::from_pixel(4, 3, image::Rgb([128, 128, 128]));
    jpg.save(d.join("dog").join("2.jpg")).unwrap();
    let ds = load_image_folder(&d, None).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.labels, [0, 0, 1, 1, 1]);
    assert_eq!(ds.class_names, ["cat", "dog"]);
    assert_eq!((ds.channels, ds.height, ds.width), (3, 3, 4));
    // Planar layout: red plane, then green (x + 50k), then blue (y).
    let im = ds.image(1);
    assert_eq!(&im[..12], &[10; 12]);
    assert_eq!(&im[12..16], &[50, 51, 52, 53]);
    assert_eq!(&im[24..], &[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    // Resizing on request; a size mismatch otherwise; a corrupt file named.
    assert_eq!(load_image_folder(&d, Some((8, 8))).unwrap().height, 8);
    image::RgbImage::new(5, 5)
        .save(d.join("cat").join("9.png"))
        .unwrap();
    assert!(matches!(
        load_image_folder(&d, None),
        Err(DataError::Inconsistent(_))
    ));
    std::fs::write(d.join("cat").join("9.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let e = load_image_folder(&d, None).unwrap_err();
    assert!(e.to_string().contains("9.png"), "{e}");
    assert!(
        load_image_folder(&d.join("cat"), None).is_err(),
        "no class folders"
    );
}

#[test]
fn digits_csv() {
    let d = tmp("digits");
    let mut line: Vec<String> = (0..64).map(|i| (i % 17).to_string()).collect();
    line.push("7".into());
    let text = format!("{}\n{}\n", line.join(","), line.join(","));
    let f = d.join("digits.csv.gz");
    std::fs::write(&f, gz(text.as_bytes())).unwrap();
    let ds = load_digits_csv(&f).unwrap();
    assert_eq!((ds.len(), ds.height, ds.labels[1]), (2, 8, 7));
    assert_eq!(ds.image(0)[16], 255); // 16 → 255 (clamped 256)
    assert_eq!(ds.image(0)[1], 16);
    std::fs::write(&f, "1,2,3\n").unwrap();
    assert!(
        load_digits_csv(&f)
            .unwrap_err()
            .to_string()
            .contains("line 1")
    );
}

#[test]
fn batches_are_deterministic_and_augmented() {
    let d = tmp("batches");
    let f = d.join("b.bin");
    let bytes: Vec<u8> = (0..10u8).flat_map(|k| cifar_record(k, k * 20)).collect();
    std::fs::write(&f, bytes).unwrap();
    let ds = load_cifar10_bin(&[&f]).unwrap();
    let norm = Normalize::from_dataset(&ds);
    let aug = Augment {
        crop_padding: 4,
        hflip: true,
    };
    let mut a = BatchLoader::new(ds.len(), 4, 9, true, false);
    let mut b = BatchLoader::new(ds.len(), 4, 9, true, false);
    assert_eq!(a.batches_per_epoch(), 3);
    let b1 = a.batch(&ds, 2, 1, &norm, aug);
    // Another loader asked out of order gives the same batch.
    let _ = b.batch(&ds, 0, 0, &norm, aug);
    assert_eq!(b.batch(&ds, 2, 1, &norm, aug), b1);
    assert_eq!(b1.x.len(), 4 * 3072);
    // Each epoch is a permutation; epochs differ.
    let mut o0 = a.order(0).to_vec();
    let o1 = a.order(1).to_vec();
    assert_ne!(o0, o1);
    o0.sort();
    assert_eq!(o0, (0..10).collect::<Vec<u32>>());
    // Last partial batch, and no augmentation: exact normalized pixels.
    let last = a.batch(&ds, 0, 2, &norm, Augment::NONE);
    assert_eq!(last.n, 2);
    let plain =
        BatchLoader::new(ds.len(), 10, 0, false, false).batch(&ds, 0, 0, &norm, Augment::NONE);
    let want = (ds.image(3)[5] as f32 / 255.0 - norm.mean[0]) / norm.std[0];
    assert_eq!(plain.x[3 * 3072 + 5], want);
    assert_eq!(plain.y, (0..10).collect::<Vec<u32>>());
}

#[test]
fn real_cifar10_subset() {
    let test = "real_cifar10_subset";
    for f in ["data_batch_1.bin", "test_batch.bin"] {
        if common::shared_data(&format!("cifar10/{f}"), test).is_none() {
            return;
        }
    }
    let dir = common::root().join("../shared/data/cifar10");
    let train = load_cifar10_bin(&[dir.join("data_batch_1.bin")]).unwrap();
    let test = load_cifar10_bin(&[dir.join("test_batch.bin")]).unwrap();
    assert_eq!((train.len(), test.len()), (10_000, 10_000));
    for ds in [&train, &test] {
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[l as usize] += 1;
        }
        // Roughly balanced (the shipped subset holds 953–1057 images a class).
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
    }
    assert_eq!(train.class_names[0], "airplane");
    let n = Normalize::from_dataset(&train);
    // The usual CIFAR-10 statistics, within what JPEG artefacts and the subset change.
    for (m, w) in n.mean.iter().zip(Normalize::cifar10().mean) {
        assert!((m - w).abs() < 0.02, "{:?}", n.mean);
    }
}

/// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it (the test command installs
/// it): gzipped IDX, 60,000 + 10,000 images of 28×28, 6,000 / 1,000 a class.
#[test]
fn real_fashion_mnist() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        if common::data_file(dir.join(f), "real_fashion_mnist").is_none() {
            return;
        }
    }
    let cfg = ire_models::train::TrainConfig {
        dataset: ire_models::train::DatasetKind::Idx,
        data: dir.to_path_buf(),
        ..Default::default()
    };
    let (train, test) = cfg.load_data().unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(
        (train.channels, train.height, train.width, train.num_classes),
        (1, 28, 28, 10)
    );
    let mut counts = [0usize; 10];
    for &l in &test.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}

/// Run by `missing_data_fails_under_ire_require` in a child process (does nothing otherwise):
/// asks for a data file that does not exist.
#[test]
fn probe_missing_data() {
    if std::env::var_os("IRE_TEST_PROBE_MISSING_DATA").is_some() {
        let p = common::root().join("data/no-such-file.bin");
        assert!(common::data_file(p, "probe_missing_data").is_none());
    }
}

/// The skip policy of every data-dependent test: absent data is a printed skip, or a failure
/// naming the file when `IRE_REQUIRE` names `data` (as the test command sets it).
#[test]
fn missing_data_fails_under_ire_require() {
    let run = |require: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "probe_missing_data",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("IRE_TEST_PROBE_MISSING_DATA", "1")
            .env("IRE_REQUIRE", require)
            .output()
            .unwrap()
    };
    let out = run("opencl,data");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no-such-file.bin is missing and IRE_REQUIRE names `data`"),
        "{text}"
    );
    let out = run("opencl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("skipped probe_missing_data:") && text.contains("no-such-file.bin"),
        "{text}"
    );
}
