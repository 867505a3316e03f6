//! Text data: corpora and the split rule, the three tokenizers against known ids, the token
//! cache (hit, corrupt, truncated), and context windows. The corpus tests read the shared data
//! folder beside the repository and are skipped, with a printed line, when it is absent (a
//! failure when `IRE_REQUIRE` names `data`, as in the test command).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use ire_models::text::{
    CacheStatus, CharTokenizer, Corpus, EOS, Gpt2Tokenizer, TextError, TokenBatches, Tokenizer,
    TokenizerKind, UNK, WordTokenizer, cache_file, load_tokenizer, split_point, tokenize_cached,
    tokenize_cached_status, tokenize_text_cached,
};

/// A fresh folder under the system's temporary folder, removed when dropped.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("ire-text-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

mod common;

/// A corpus of the shared data folder: a skip line when absent, a failure under
/// `IRE_REQUIRE=data`.
fn shared(file: &str) -> Option<PathBuf> {
    common::shared_data(&format!("text/{file}"), file)
}

// ---------------------------------------------------------------------------------------------
// Corpora and the split
// ---------------------------------------------------------------------------------------------

#[test]
fn split_rule_is_exact() {
    // Four lines of five bytes: 20 bytes, lines starting at 0, 5, 10, 15.
    let c = Corpus::from_text("t", "aaaa\nbbbb\ncccc\ndddd\n");
    // 0.25: target 15 is a line start.
    assert_eq!(
        c.split(0.25),
        ("aaaa\nbbbb\ncccc\n".into(), "dddd\n".into())
    );
    // 0.3: target 14 is inside line 3: the next line start, 15.
    assert_eq!(split_point(&c.text, 0.3), 15);
    // 0.5: target 10 is a line start.
    assert_eq!(split_point(&c.text, 0.5), 10);
    // 0.45: target 11, next line start 15.
    assert_eq!(split_point(&c.text, 0.45), 15);
    // 0.1: target 18 is inside the last line, whose end is the text's end: its start, 15.
    assert_eq!(split_point(&c.text, 0.1), 15);
    // 0 and 1, and out-of-range values clamped.
    assert_eq!(split_point(&c.text, 0.0), 20);
    assert_eq!(split_point(&c.text, 1.0), 0);
    assert_eq!(split_point(&c.text, -3.0), 20);
    assert_eq!(split_point(&c.text, f64::NAN), 20);
    assert_eq!(split_point(&c.text, 7.0), 0);
    // A single line: the first character boundary at or after the target (é is 2 bytes).
    assert_eq!(split_point("abcdéfgh", 0.5), 4);
    assert_eq!(split_point("abcéefgh", 0.5), 5);
    // The parts always concatenate to the whole text.
    for f in [0.0, 0.05, 0.1, 0.33, 0.9, 1.0] {
        let (a, b) = c.split(f);
        assert_eq!(a + &b, c.text);
    }
}

#[test]
fn load_checks_utf8_and_emptiness() {
    let d = tmp("utf8");
    let bad = d.join("bad.txt");
    std::fs::write(&bad, b"hello\nw\xffrld\n").unwrap();
    match Corpus::load(&bad) {
        Err(e @ TextError::InvalidUtf8 { offset: 7, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("byte offset 7") && msg.contains("bad.txt"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A multi-byte character cut short: the offset is where the sequence starts.
    std::fs::write(&bad, &"ab€".as_bytes()[..4]).unwrap();
    assert!(matches!(
        Corpus::load(&bad),
        Err(TextError::InvalidUtf8 { offset: 2, .. })
    ));
    let empty = d.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Corpus::load(&empty), Err(TextError::Empty { .. })));
    assert!(matches!(
        Corpus::load(&d.join("missing.txt")),
        Err(TextError::Io { .. })
    ));
    // The WikiText raw format is plain text.
    let raw = d.join("wiki.train.raw");
    std::fs::write(
        &raw,
        " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> \n",
    )
    .unwrap();
    let c = Corpus::load(&raw).unwrap();
    assert_eq!(c.name, "wiki.train.raw");
    assert!(c.text.starts_with(" \n = Valkyria"));
}

// ---------------------------------------------------------------------------------------------
// Character level
// ---------------------------------------------------------------------------------------------

#[test]
fn char_tokenizer_small_text() {
    let t = CharTokenizer::fit("hello, wörld\n");
    assert_eq!(
        t.chars(),
        &['\n', ' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w', 'ö']
    );
    assert_eq!(t.encode("hello").unwrap(), [5, 4, 6, 6, 7]);
    assert_eq!(t.decode(&[10, 1, 9]).unwrap(), "ö w");
    match t.encode("held!") {
        Err(
            e @ TextError::UnknownChar {
                ch: '!', offset: 4, ..
            },
        ) => {
            assert!(e.to_string().contains("byte offset 4"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        t.decode(&[11]),
        Err(TextError::UnknownId {
            id: 11,
            vocab_size: 11,
            ..
        })
    ));
}

#[test]
fn char_tokenizer_on_tinyshakespeare() {
    let Some(path) = shared("tinyshakespeare.txt") else {
        return;
    };
    let c = Corpus::load(&path).unwrap();
    assert_eq!(c.text.len(), 1_115_394);
    // nanoGPT's shakespeare_char: the vocabulary of the whole file, sorted.
    let t = CharTokenizer::fit(&c.text);
    assert_eq!(t.vocab_size(), 65);
    let chars: String = t.chars().iter().collect();
    assert_eq!(
        chars,
        "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    );
    let ids = t.encode(&c.text).unwrap();
    assert_eq!(ids.len(), 1_115_394);
    // "First Citizen:\n"
    assert_eq!(
        ids[..15],
        [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52, 10, 0]
    );
    assert_eq!(t.decode(&ids).unwrap(), c.text);
    // nanoGPT cuts at exactly 90 % (1,003,854 characters); here the cut moves to the next
    // line start.
    let (train, val) = c.split(0.1);
    assert!(train.len() >= 1_003_854 && train.ends_with('\n'));
    assert!(train.len() - 1_003_854 < 80);
    println!(
        "tinyshakespeare: char vocab {}, {} tokens, split {} / {}",
        t.vocab_size(),
        ids.len(),
        train.len(),
        val.len()
    );
    // Save and load.
    let d = tmp("char-json");
    let f = d.join("char.json");
    t.save(&f).unwrap();
    assert_eq!(CharTokenizer::load(&f).unwrap(), t);
    let any = load_tokenizer(&f).unwrap();
    assert_eq!((any.name(), any.vocab_size()), ("char", 65));
    assert_eq!(any.encode("First").unwrap(), [18, 47, 56, 57, 58]);
    assert!(WordTokenizer::load(&f).is_err());
}

// ---------------------------------------------------------------------------------------------
// Word level
// ---------------------------------------------------------------------------------------------

#[test]
fn word_tokenizer_small_text() {
    // Lines end at \n, \r\n or \r; an empty line is a lone <eos>; a final terminator adds no
    // line; runs of whitespace (and U+001F, as Python's str.split) separate words.
    let text = "the cat sat\nthe dog\n\n  a  cat \r\nend\u{1f}of\rx";
    let t = WordTokenizer::fit(text);
    assert_eq!(
        t.words(),
        ["the", "cat", "sat", EOS, "dog", "a", "end", "of", "x", UNK]
    );
    assert_eq!((t.eos_id(), t.unk_id(), t.vocab_size()), (3, 9, 10));
    assert_eq!(
        t.encode(text).unwrap(),
        [0, 1, 2, 3, 0, 4, 3, 3, 5, 1, 3, 6, 7, 3, 8, 3]
    );
    // Unknown words map to <unk>.
    assert_eq!(t.encode("the bird sat\n").unwrap(), [0, 9, 2, 3]);
    assert_eq!(t.encode("").unwrap(), Vec::<u32>::new());
    // Decoding joins with spaces and turns <eos> into a newline.
    assert_eq!(
        t.decode(&[0, 1, 2, 3, 0, 4, 3, 3, 5, 9]).unwrap(),
        "the cat sat\nthe dog\n\na <unk>"
    );
    assert!(matches!(
        t.decode(&[10]),
        Err(TextError::UnknownId { id: 10, .. })
    ));

    // A text that already uses <unk> (as WikiText) keeps its place in order of appearance.
    let w = WordTokenizer::fit(" = Valkyria = \n <unk> is <unk> \n");
    assert_eq!(w.words(), ["=", "Valkyria", EOS, UNK, "is"]);
    assert_eq!(w.encode("Valkyria was\n").unwrap(), [1, 3, 2]);

    // Save and load.
    let d = tmp("word-json");
    let f = d.join("word.json");
    t.save(&f).unwrap();
    assert_eq!(WordTokenizer::load(&f).unwrap(), t);
    let any = load_tokenizer(&f).unwrap();
    assert_eq!(any.encode("the dog\n").unwrap(), [0, 4, 3]);
    // A file without <unk> or with a repeated word is refused.
    std::fs::write(&f, r#"{"kind":"word","version":1,"words":["a","<eos>"]}"#).unwrap();
    assert!(matches!(
        WordTokenizer::load(&f),
        Err(TextError::Format { .. })
    ));
    std::fs::write(
        &f,
        r#"{"kind":"word","version":1,"words":["a","a","<eos>","<unk>"]}"#,
    )
    .unwrap();
    assert!(WordTokenizer::load(&f).is_err());
    std::fs::write(&f, "{not json").unwrap();
    assert!(matches!(load_tokenizer(&f), Err(TextError::Format { .. })));
}

#[test]
fn word_tokenizer_on_sotu() {
    let Some(path) = shared("sotu.txt") else {
        return;
    };
    let c = Corpus::load(&path).unwrap();
    let t0 = Instant::now();
    let t = WordTokenizer::fit(&c.text);
    let ids = t.encode(&c.text).unwrap();
    // The official Dictionary over this file has 60,472 words (no <unk> in it); <unk> is
    // appended. 1,795,561 tokens, <eos> included.
    assert_eq!(t.vocab_size(), 60_473);
    assert_eq!(t.unk_id(), 60_472);
    assert_eq!(ids.len(), 1_795_561);
    assert!(!ids.contains(&t.unk_id()));
    println!(
        "sotu: word vocab {}, {} tokens, {:.2} s",
        t.vocab_size(),
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    // Fitted on the first 90 % only, the validation part has unknown words.
    let (train, val) = c.split(0.1);
    let tt = WordTokenizer::fit(&train);
    let v = tt.encode(&val).unwrap();
    let unk = v.iter().filter(|&&i| i == tt.unk_id()).count();
    println!(
        "sotu split: train vocab {}, val {} tokens, {unk} <unk>",
        tt.vocab_size(),
        v.len()
    );
    assert!(unk > 0 && tt.vocab_size() < t.vocab_size());
}

// ---------------------------------------------------------------------------------------------
// GPT-2 BPE
// ---------------------------------------------------------------------------------------------

#[test]
fn gpt2_known_ids() {
    let t = Gpt2Tokenizer::new().unwrap();
    assert_eq!((t.name(), t.vocab_size()), ("gpt2", 50_257));
    assert_eq!(t.encode("Hello world").unwrap(), [15496, 995]);
    assert_eq!(t.encode(" the").unwrap(), [262]);
    // Checked independently with Python's `tiktoken` (and agreeing with Hugging Face
    // `tokenizers`' byte-level BPE on the same merges):
    //   import tiktoken
    //   enc = tiktoken.get_encoding("gpt2")
    //   print(enc.encode_ordinary(s))
    let s = "The quick brown fox jumps over the lazy dog's back, doesn't it? 1234567 naïve café \
             — “quoted”   spaces\nnewline";
    let want = [
        464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 338, 736, 11, 1595, 470, 340, 30,
        17031, 2231, 3134, 41492, 40304, 851, 564, 250, 421, 5191, 447, 251, 220, 220, 9029, 198,
        3605, 1370,
    ];
    let ids = t.encode(s).unwrap();
    assert_eq!(ids, want);
    assert_eq!(t.decode(&ids).unwrap(), s);
    // <|endoftext|> in a text is ordinary text; its id decodes to the marker.
    assert_ne!(t.encode("<|endoftext|>").unwrap(), [50256]);
    assert_eq!(
        t.decode(&[Gpt2Tokenizer::END_OF_TEXT]).unwrap(),
        "<|endoftext|>"
    );
    // Half of a multi-byte character decodes lossily; an id past the vocabulary is an error.
    assert_eq!(t.decode(&[564]).unwrap(), " \u{fffd}");
    assert!(matches!(
        t.decode(&[50_257]),
        Err(TextError::UnknownId { id: 50_257, .. })
    ));
    let d = tmp("gpt2-json");
    let f = d.join("gpt2.json");
    t.save(&f).unwrap();
    let any = load_tokenizer(&f).unwrap();
    assert_eq!(any.encode("Hello world").unwrap(), [15496, 995]);
    assert_eq!(any.fingerprint(), t.fingerprint());
}

#[test]
fn gpt2_on_corpora_matches_serial_encoding_and_tiktoken_counts() {
    // Counts and id sums from Python's tiktoken ("gpt2", encode_ordinary) on the whole files.
    // 338,025 on tinyshakespeare = nanoGPT's shakespeare prepare (301,966 train + 36,059 val).
    let cases = [
        ("tinyshakespeare.txt", 338_025usize, 1_405_356_689u64),
        ("sotu.txt", 2_074_534, 8_325_749_530),
        ("moby-dick.txt", 317_756, 1_388_278_114),
    ];
    let t = Gpt2Tokenizer::new().unwrap();
    for (file, count, sum) in cases {
        let Some(path) = shared(file) else {
            continue;
        };
        let c = Corpus::load(&path).unwrap();
        let t0 = Instant::now();
        let ids = t.encode(&c.text).unwrap();
        let parallel = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let serial = t.encode_serial(&c.text);
        let serial_s = t1.elapsed().as_secs_f64();
        assert_eq!(ids, serial, "{file}: chunked encoding differs");
        assert_eq!(ids.len(), count, "{file}");
        assert_eq!(ids.iter().map(|&i| i as u64).sum::<u64>(), sum, "{file}");
        assert_eq!(t.decode(&ids).unwrap(), c.text);
        println!(
            "{file}: gpt2 {} tokens, encode {parallel:.2} s (one thread {serial_s:.2} s)",
            ids.len()
        );
    }
}

#[test]
fn tokenizer_kinds_by_name() {
    assert_eq!(
        "gpt2".parse::<TokenizerKind>().unwrap(),
        TokenizerKind::Gpt2
    );
    assert!(TokenizerKind::from_name("bpe").is_err());
    let w = TokenizerKind::Word.build("a b\nb c\n").unwrap();
    assert_eq!((w.name(), w.vocab_size()), ("word", 5));
    let c = TokenizerKind::Char.build("abc").unwrap();
    assert_eq!(c.encode("cab").unwrap(), [2, 0, 1]);
}

// ---------------------------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------------------------

#[test]
fn token_cache_hits_and_rebuilds_bad_files() {
    let d = tmp("cache");
    let corpus = d.join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be\nthat is the question\n".repeat(50),
    )
    .unwrap();
    let cache = d.join("cache");
    let tok = WordTokenizer::fit(&std::fs::read_to_string(&corpus).unwrap());
    let want = tok
        .encode(&std::fs::read_to_string(&corpus).unwrap())
        .unwrap();

    let (a, s) = tokenize_cached_status(&corpus, &tok, &cache).unwrap();
    assert_eq!((a.len(), s), (want.len(), CacheStatus::Built));
    assert_eq!(a, want);
    let file = cache_file(&corpus, &tok, &cache).unwrap();
    assert!(file.exists());
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"IRETOKS\0");
    assert_eq!(bytes.len(), 8 + 4 + 32 + 8 + 4 * want.len() + 4);

    // The second call reads the cache.
    let (b, s) = tokenize_cached_status(&corpus, &tok, &cache).unwrap();
    assert_eq!((b, s), (want.clone(), CacheStatus::Hit));
    assert_eq!(tokenize_cached(&corpus, &tok, &cache).unwrap(), want);

    // One flipped bit in the ids: the checksum fails, the file is rebuilt.
    let mut bad = bytes.clone();
    bad[60] ^= 0x10;
    std::fs::write(&file, &bad).unwrap();
    let (c, s) = tokenize_cached_status(&corpus, &tok, &cache).unwrap();
    assert_eq!((c, s), (want.clone(), CacheStatus::Rebuilt));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // Truncated files (mid-ids, mid-header, empty) are rebuilt.
    for keep in [bytes.len() - 1, bytes.len() - 4, 30, 0] {
        std::fs::write(&file, &bytes[..keep]).unwrap();
        let (c, s) = tokenize_cached_status(&corpus, &tok, &cache).unwrap();
        assert_eq!((c, s), (want.clone(), CacheStatus::Rebuilt), "kept {keep}");
    }
    // A consistent file (valid checksum) with a wrong count, or ids outside the vocabulary.
    let mut forged = bytes[..bytes.len() - 4].to_vec();
    forged[44..52].copy_from_slice(&((want.len() - 1) as u64).to_le_bytes());
    let crc = crc_of(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&file, &forged).unwrap();
    assert_eq!(
        tokenize_cached_status(&corpus, &tok, &cache).unwrap().1,
        CacheStatus::Rebuilt
    );
    let mut forged = bytes[..bytes.len() - 4].to_vec();
    forged[52..56].copy_from_slice(&1_000_000u32.to_le_bytes());
    let crc = crc_of(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&file, &forged).unwrap();
    assert_eq!(
        tokenize_cached_status(&corpus, &tok, &cache).unwrap().1,
        CacheStatus::Rebuilt
    );

    // Another tokenizer, or another text, is another file.
    let chars = CharTokenizer::fit(&std::fs::read_to_string(&corpus).unwrap());
    let (e, s) = tokenize_cached_status(&corpus, &chars, &cache).unwrap();
    assert_eq!((e.len(), s), (2000, CacheStatus::Built));
    let other_vocab = WordTokenizer::fit("to be or not\n");
    assert_ne!(
        cache_file(&corpus, &other_vocab, &cache).unwrap(),
        cache_file(&corpus, &tok, &cache).unwrap()
    );
    std::fs::write(&corpus, "to be\n").unwrap();
    let (f, s) = tokenize_cached_status(&corpus, &tok, &cache).unwrap();
    assert_eq!((f, s), (vec![0, 1, 4], CacheStatus::Built));

    // In-memory splits use the same cache.
    let (g, s) = tokenize_text_cached("that is\n", "val", &tok, &cache).unwrap();
    assert_eq!((g, s), (vec![5, 6, 4], CacheStatus::Built));
    assert_eq!(
        tokenize_text_cached("that is\n", "val", &tok, &cache)
            .unwrap()
            .1,
        CacheStatus::Hit
    );

    // Only cache files are left: no temporary file.
    for e in std::fs::read_dir(&cache).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(name.ends_with(".tokens"), "{name}");
    }
    // An unencodable text is an error, and nothing is cached.
    let abc = CharTokenizer::fit("abc");
    assert!(matches!(
        tokenize_cached(&corpus, &abc, &cache),
        Err(TextError::UnknownChar { .. })
    ));
}

fn crc_of(b: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise, to forge consistent files without the library's helper.
    let mut crc = !0u32;
    for &x in b {
        crc ^= x as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn token_cache_on_sotu_with_gpt2() {
    let Some(path) = shared("sotu.txt") else {
        return;
    };
    let d = tmp("cache-sotu");
    let t = Gpt2Tokenizer::new().unwrap();
    let t0 = Instant::now();
    let (a, s) = tokenize_cached_status(&path, &t, &d).unwrap();
    let built = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (b, s2) = tokenize_cached_status(&path, &t, &d).unwrap();
    let hit = t1.elapsed().as_secs_f64();
    assert_eq!((s, s2), (CacheStatus::Built, CacheStatus::Hit));
    assert_eq!(a, b);
    assert_eq!(a.len(), 2_074_534);
    println!("sotu gpt2 cache: built {built:.2} s, hit {hit:.3} s");
}

// ---------------------------------------------------------------------------------------------
// Context windows
// ---------------------------------------------------------------------------------------------

#[test]
fn random_batches_are_deterministic_shifted_and_in_bounds() {
    let tokens: Vec<u32> = (0..100).collect();
    let b = TokenBatches::new(tokens.clone(), 8, 4, 7).unwrap();
    let (x, y) = b.random_batch(3);
    assert_eq!((x.len(), y.len()), (32, 32));
    assert_eq!(b.random_batch(3), (x.clone(), y.clone()));
    assert_eq!(
        TokenBatches::new(tokens.clone(), 8, 4, 7)
            .unwrap()
            .random_batch(3),
        (x.clone(), y.clone())
    );
    assert_ne!(b.random_batch(4).0, x);
    assert_ne!(
        TokenBatches::new(tokens.clone(), 8, 4, 8)
            .unwrap()
            .random_batch(3)
            .0,
        x
    );
    // Tokens are their positions: each row is consecutive, targets are inputs + 1.
    for (xr, yr) in x.chunks(8).zip(y.chunks(8)) {
        for i in 0..8 {
            assert_eq!(xr[i], xr[0] + i as u32);
            assert_eq!(yr[i], xr[i] + 1);
        }
    }
    // Offsets cover 0..=91 (100 − 8 − 1) and never more.
    let mut seen = [false; 92];
    for step in 0..2000 {
        for o in b.random_offsets(step) {
            assert!(o <= 91);
            seen[o] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
    // The shortest valid split: context + 1 tokens, one offset.
    let b = TokenBatches::new(vec![5, 6, 7], 2, 3, 0).unwrap();
    assert_eq!(
        b.random_batch(9),
        (vec![5, 6, 5, 6, 5, 6], vec![6, 7, 6, 7, 6, 7])
    );
}

#[test]
fn too_short_splits_and_zero_sizes_are_errors() {
    match TokenBatches::new(vec![1; 8], 8, 2, 0) {
        Err(
            e @ TextError::TooShort {
                tokens: 8,
                context: 8,
                needed: 9,
            },
        ) => assert!(e.to_string().contains("needs at least 9"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        TokenBatches::new(vec![], 1, 1, 0),
        Err(TextError::TooShort { .. })
    ));
    assert!(matches!(
        TokenBatches::new(vec![1; 10], 0, 2, 0),
        Err(TextError::Config(_))
    ));
    assert!(matches!(
        TokenBatches::new(vec![1; 10], 2, 0, 0),
        Err(TextError::Config(_))
    ));
}

#[test]
fn sequential_batches_cover_every_target_once() {
    // 101 tokens, 100 targets; context 8: 12 full windows (96 targets) and a tail of 4.
    let tokens: Vec<u32> = (0..101).collect();
    let b = TokenBatches::new(tokens, 8, 5, 0).unwrap();
    let items: Vec<_> = b.sequential_batches().collect();
    assert_eq!(items.len(), b.num_sequential_batches());
    assert_eq!(
        items.iter().map(|i| (i.rows, i.len)).collect::<Vec<_>>(),
        [(5, 8), (5, 8), (2, 8), (1, 4)]
    );
    let mut targets = Vec::new();
    for it in &items {
        assert_eq!(it.inputs.len(), it.rows * it.len);
        for (x, y) in it.inputs.iter().zip(&it.targets) {
            assert_eq!(*y, x + 1);
        }
        targets.extend_from_slice(&it.targets);
    }
    assert_eq!(targets, (1..101).collect::<Vec<u32>>());
    assert_eq!(items[0].inputs[..9], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    // Exactly divisible: no tail.
    let b = TokenBatches::new((0..17).collect(), 4, 3, 0).unwrap();
    let items: Vec<_> = b.sequential_batches().collect();
    assert_eq!(
        items.iter().map(|i| (i.rows, i.len)).collect::<Vec<_>>(),
        [(3, 4), (1, 4)]
    );
    assert_eq!(b.num_sequential_batches(), 2);
}

#[test]
fn a_character_only_in_the_held_out_part_still_tokenizes() {
    use ire_models::train::source::Source;
    use ire_models::train::{DatasetKind, TrainConfig};
    let dir = tmp("heldout-char");
    let path = dir.0.join("naive.txt");
    // The last tenth (the validation part) holds the only `ï`.
    let mut text = "the cat sat on the mat\n".repeat(40);
    text.push_str("a naïve cat\n".repeat(4).as_str());
    std::fs::write(&path, &text).unwrap();
    let cfg = TrainConfig {
        dataset: DatasetKind::Text,
        data: path,
        tokenizer: "char".into(),
        context: 8,
        batch_size: 2,
        ..TrainConfig::default()
    };
    let src = Source::text(&cfg).unwrap();
    // Vocabulary: the distinct characters of the whole text, `ï` included.
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    assert_eq!(src.tokenizer().unwrap().vocab_size(), chars.len());
}
