//! Bad input gets a clear error and a non-zero exit, never a panic or a crash, and no
//! allocation of a size a file merely claims.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hearth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-errors-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `hearth <cmd> <path>` and checks for a clean failure whose message contains `want`.
fn fails_cleanly(args: &[&str], want: &str) {
    let out = hearth(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail with exit 1; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.to_lowercase().contains(&want.to_lowercase()),
        "{args:?}: expected '{want}' in: {err}"
    );
}

/// A minimal GGUF writer for hand-made (and hostile) files.
struct Gguf(Vec<u8>);
impl Gguf {
    fn new(n_tensors: u64, n_kv: u64) -> Gguf {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        Gguf(b)
    }
    fn str(mut self, s: &str) -> Self {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_str(self, k: &str, v: &str) -> Self {
        let mut s = self.str(k);
        s.0.extend(8u32.to_le_bytes());
        s.str(v)
    }
    fn kv_u32(self, k: &str, v: u32) -> Self {
        let mut s = self.str(k);
        s.0.extend(4u32.to_le_bytes());
        s.0.extend(v.to_le_bytes());
        s
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut s = self.str(name);
        s.0.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            s.0.extend(d.to_le_bytes());
        }
        s.0.extend(ty.to_le_bytes());
        s.0.extend(offset.to_le_bytes());
        s
    }
    fn data(mut self, n: usize) -> Self {
        while self.0.len() % 32 != 0 {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn write(&self, p: &Path) {
        std::fs::write(p, &self.0).unwrap();
    }
}

#[test]
fn not_a_gguf_file() {
    let p = tmp("garbage.gguf");
    std::fs::write(&p, b"this is not a model at all, just some text").unwrap();
    fails_cleanly(&["inspect", p.to_str().unwrap()], "not a GGUF file");
    let p = tmp("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    fails_cleanly(&["inspect", p.to_str().unwrap()], "too short");
}

#[test]
fn hostile_counts_are_rejected_before_allocating() {
    let p = tmp("many-tensors.gguf");
    Gguf::new(u64::MAX / 2, 0).write(&p);
    fails_cleanly(
        &["inspect", p.to_str().unwrap()],
        "more than the file can hold",
    );
    let p = tmp("long-string.gguf");
    let mut g = Gguf::new(0, 1);
    g.0.extend((1u64 << 60).to_le_bytes());
    g.0.extend([b'x'; 64]);
    g.write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "exceeds");
    let p = tmp("huge-array.gguf");
    let mut g = Gguf::new(0, 1).str("tokenizer.ggml.tokens");
    g.0.extend(9u32.to_le_bytes()); // array
    g.0.extend(8u32.to_le_bytes()); // of strings
    g.0.extend((1u64 << 50).to_le_bytes());
    g.write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "cannot fit");
    let p = tmp("huge-dims.gguf");
    Gguf::new(1, 0)
        .tensor("token_embd.weight", &[1 << 40, 1 << 40], 0, 0)
        .data(64)
        .write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "larger than the file");
}

#[test]
fn tensor_past_end_of_file_is_reported_as_truncated() {
    let p = tmp("short-data.gguf");
    Gguf::new(1, 1)
        .kv_str("general.architecture", "llama")
        .tensor("token_embd.weight", &[64, 64], 0, 0)
        .data(100)
        .write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "truncated");
}

#[test]
fn unknown_architecture_and_tensor_type() {
    let p = tmp("arch.gguf");
    Gguf::new(1, 1)
        .kv_str("general.architecture", "frobnicator")
        .tensor("token_embd.weight", &[8, 4], 0, 0)
        .data(128)
        .write(&p);
    fails_cleanly(
        &["inspect", p.to_str().unwrap()],
        "architecture 'frobnicator'",
    );
    let p = tmp("type.gguf");
    Gguf::new(1, 1)
        .kv_str("general.architecture", "llama")
        .tensor("token_embd.weight", &[8, 4], 99, 0)
        .data(128)
        .write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "unknown ggml type id 99");
    let p = tmp("version.gguf");
    let mut g = Gguf::new(0, 0);
    g.0[4..8].copy_from_slice(&7u32.to_le_bytes());
    g.write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "GGUF version 7");
}

#[test]
fn missing_tensor_and_metadata() {
    let p = tmp("no-layers.gguf");
    Gguf::new(1, 5)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.embedding_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.feed_forward_length", 16)
        .tensor("token_embd.weight", &[8, 4], 0, 0)
        .data(128)
        .write(&p);
    fails_cleanly(
        &["inspect", p.to_str().unwrap()],
        "blk.0.attn_q.weight is missing",
    );
}

#[test]
fn truncated_real_model() {
    let out = hearth(&["pull", "smollm2"]);
    assert!(out.status.success());
    let path = String::from_utf8(out.stdout).unwrap();
    let bytes = std::fs::read(path.trim()).unwrap();
    for cut in [10usize, 1000, 5 << 20, bytes.len() - 1] {
        let p = tmp(&format!("cut-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let out = hearth(&["run", p.to_str().unwrap(), "hi", "-n", "1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: {err}");
        assert!(!err.contains("panicked"), "cut at {cut}: {err}");
        assert!(
            err.contains("truncated") || err.contains("too short"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn corrupted_real_model_header() {
    let out = hearth(&["pull", "smollm2"]);
    let path = String::from_utf8(out.stdout).unwrap();
    let mut bytes = std::fs::read(path.trim()).unwrap();
    // Overwrite the first metadata key's length with garbage.
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = tmp("corrupt.gguf");
    std::fs::write(&p, &bytes).unwrap();
    fails_cleanly(
        &["logits", p.to_str().unwrap(), "--tokens", "1"],
        "invalid model file",
    );
}

#[test]
fn bad_hf_directories() {
    let d = tmp("hf-empty");
    std::fs::create_dir_all(&d).unwrap();
    fails_cleanly(&["inspect", d.to_str().unwrap()], "no config.json");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    fails_cleanly(&["inspect", d.to_str().unwrap()], "config.json");
    std::fs::write(d.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    fails_cleanly(&["inspect", d.to_str().unwrap()], "no .safetensors");
    std::fs::write(d.join("model.safetensors"), [255u8; 16]).unwrap();
    fails_cleanly(&["inspect", d.to_str().unwrap()], "model.safetensors");
}

#[test]
fn bad_arguments() {
    fails_cleanly(&["run", "/no/such/model.gguf", "hi"], "no model file");
    fails_cleanly(&["logits", "smollm2", "--tokens", "1,x"], "not a token id");
    fails_cleanly(
        &["logits", "smollm2", "--tokens", "99999999"],
        "outside the vocabulary",
    );
    fails_cleanly(&["run", "smollm2", "--top-p", "0", "hi"], "top_p");
    fails_cleanly(&["embed", "smollm2", "hi", ""], "text 1 has no tokens");
    let long = "word ".repeat(200);
    fails_cleanly(
        &["run", "smollm2", &long, "--ctx", "64"],
        "context holds 64",
    );
    let out = hearth(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}

#[test]
fn vocabulary_only_gguf_tokenizes() {
    // A GGUF with a vocabulary and no tensors: tokenize must work.
    let p = tmp("vocab-only.gguf");
    let mut g = Gguf::new(0, 3)
        .kv_str("general.architecture", "llama")
        .kv_str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.tokens");
    g.0.extend(9u32.to_le_bytes());
    g.0.extend(8u32.to_le_bytes());
    let toks = ["a", "b", "ab", "\u{120}"];
    g.0.extend((toks.len() as u64).to_le_bytes());
    for t in toks {
        g = g.str(t);
    }
    g.write(&p);
    let out = hearth(&["tokenize", p.to_str().unwrap(), "abab a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // no merges: every byte is its own token
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "[0,1,0,1,3,0]"
    );
    let out = hearth(&["inspect", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn impossible_expert_routing() {
    // more experts per token than there are experts: a clear error, not an index panic
    let p = tmp("bad-moe.gguf");
    Gguf::new(1, 7)
        .kv_str("general.architecture", "qwen3moe")
        .kv_u32("qwen3moe.embedding_length", 8)
        .kv_u32("qwen3moe.attention.head_count", 2)
        .kv_u32("qwen3moe.block_count", 1)
        .kv_u32("qwen3moe.feed_forward_length", 16)
        .kv_u32("qwen3moe.expert_count", 4)
        .kv_u32("qwen3moe.expert_used_count", 9)
        .tensor("token_embd.weight", &[8, 4], 0, 0)
        .data(128)
        .write(&p);
    fails_cleanly(&["inspect", p.to_str().unwrap()], "not a valid routing");
}

/// issue 22: `hearth run smollm2 -c 99999999` aborted on a 76 GB allocation (SIGABRT).
#[test]
fn absurd_sizes_are_refused_with_the_largest_that_fits() {
    fails_cleanly(
        &["run", "smollm2", "-c", "99999999", "hi"],
        "the largest --ctx that fits is",
    );
    fails_cleanly(
        &["run", "smollm2", "-c", "0", "hi"],
        "--ctx must be at least 1",
    );
    fails_cleanly(
        &["bench", "smollm2", "-p", "999999999", "-n", "0"],
        "the largest -p / -n that fits is",
    );
    fails_cleanly(
        &["serve", "smollm2", "-c", "99999999"],
        "the largest --ctx that fits is",
    );
    fails_cleanly(
        &[
            "serve",
            "smollm2",
            "-c",
            "100000",
            "-p",
            "4000",
            "--kv-mib",
            "99999999999",
        ],
        "the largest --kv-mib that fits is",
    );
    fails_cleanly(
        &["serve", "smollm2", "--batch", "99999999"],
        "--batch 99999999 is more than",
    );
    fails_cleanly(
        &["serve", "smollm2", "--parallel", "99999999"],
        "--parallel 99999999 is more than",
    );
    fails_cleanly(
        &["serve", "smollm2", "--timeout-head", "nan"],
        "--timeout-head",
    );
    fails_cleanly(
        &["serve", "smollm2", "--max-connections", "0"],
        "--max-connections must be at least 1",
    );
}

/// A copy of the tiny llama fixture (HF directory) named `name`.
fn tiny_copy(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// issue 22: a chat template with nested loops ran for hours (and one that doubles a string
/// grew to 5.7 GB); `run` now stops with a clear message.
#[test]
fn a_hostile_chat_template_stops_run_with_a_clear_error() {
    let dir = tiny_copy("loop-llama");
    for (i, t) in [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(dir.join("chat_template.jinja"), t).unwrap();
        let t0 = std::time::Instant::now();
        fails_cleanly(&["run", dir.to_str().unwrap(), "hi", "-n", "2"], "budget");
        assert!(t0.elapsed().as_secs() < 30, "template {i} took {:?}", t0.elapsed());
    }
}

/// A copy of the tiny llama fixture whose final norm is NaN, so every logit is NaN.
fn nan_model() -> PathBuf {
    let dir = tiny_copy("nan-llama");
    let mut st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let t = &header["model.norm.weight"];
    assert_eq!(t["dtype"], "F32");
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    for x in st[8 + n + a..8 + n + b].chunks_exact_mut(4) {
        x.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    dir
}

/// issue 22: a model whose weights give NaN made `run` print nothing and exit 0.
#[test]
fn nan_logits_stop_generation_with_an_error() {
    let dir = nan_model();
    let d = dir.to_str().unwrap();
    fails_cleanly(&["run", d, "--raw", "hello", "-n", "4"], "non-finite logit");
    fails_cleanly(
        &["run", d, "hello", "-n", "4", "--temp", "0"],
        "non-finite logit",
    );
}

fn tiny_gguf() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny/llama/model.gguf")
        .display()
        .to_string()
}

fn fixture_text() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2/text.txt")
        .display()
        .to_string()
}

#[test]
fn perplexity_and_imatrix_refuse_bad_input() {
    let m = tiny_gguf();
    fails_cleanly(&["perplexity", &m], "--file");
    fails_cleanly(
        &["perplexity", &m, "--file", "/nonexistent/text"],
        "cannot read",
    );
    let bin = tmp("binary.txt");
    std::fs::write(&bin, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    let bin = bin.display().to_string();
    fails_cleanly(&["perplexity", &m, "--file", &bin], "not UTF-8");
    let t = fixture_text();
    fails_cleanly(
        &["perplexity", &m, "--file", &t, "-c", "4096"],
        "at least 8192 tokens",
    );
    let junk = tmp("junk.kld");
    std::fs::write(
        &junk,
        b"_logits_\xff\xff\xff\x7f\x01\x00\x00\x00\x01\x00\x00\x00",
    )
    .unwrap();
    let junk = junk.display().to_string();
    fails_cleanly(&["perplexity", &m, "--kl-divergence", &junk], "truncated");
    fails_cleanly(
        &["imatrix", &m, "--file", &t, "-c", "4096", "-o", &bin],
        "at least 8192 tokens",
    );
    fails_cleanly(&["imatrix", &m, "-o", &bin], "--in-file");
    fails_cleanly(&["imatrix", &m, "--in-file", &bin, "-o", &bin], "--in-file");
}

#[test]
fn imatrix_in_files_merge_into_one() {
    let (m, t) = (tiny_gguf(), fixture_text());
    let one = tmp("one.gguf").display().to_string();
    let two = tmp("two.gguf").display().to_string();
    let out = hearth(&[
        "imatrix", &m, "--file", &t, "-c", "64", "--chunks", "2", "-o", &one,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the file with itself, then with a fresh run over the text: chunks add up
    let out = hearth(&[
        "imatrix",
        &m,
        "--in-file",
        &one,
        "--in-file",
        &one,
        "-o",
        &two,
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("from 4 chunks of 64"),
        "{s}"
    );
    let out = hearth(&[
        "imatrix",
        &m,
        "--in-file",
        &two,
        "--file",
        &t,
        "-c",
        "64",
        "--chunks",
        "2",
        "-o",
        &two,
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("from 6 chunks of 64"),
        "{s}"
    );
    for p in [one, two] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn perplexity_prints_the_summary_lines_scripts_parse() {
    let (m, t) = (tiny_gguf(), fixture_text());
    let base = tmp("base.kld").display().to_string();
    let out = hearth(&[
        "perplexity",
        &m,
        "--file",
        &t,
        "-c",
        "64",
        "--chunks",
        "3",
        "-t",
        "1",
        "--save-logits",
        &base,
    ]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("[1]") && s.contains("[3]"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("PPL: ") && l.contains(" +/- ")),
        "{s}"
    );
    let out = hearth(&[
        "perplexity",
        &m,
        "--kl-divergence",
        &base,
        "--file",
        &t,
        "-t",
        "1",
    ]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let kld: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("Mean KLD: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Mean KLD line: {s}"));
    assert!(kld.abs() < 1e-5, "{kld}");
    assert!(s.contains("Same top p: 100.000"), "{s}");
    // another text does not tokenize to the file's tokens
    let other = tmp("other.txt");
    std::fs::write(&other, "something else entirely ".repeat(100)).unwrap();
    let other = other.display().to_string();
    fails_cleanly(
        &["perplexity", &m, "--kl-divergence", &base, "--file", &other],
        "does not tokenize to",
    );
    fails_cleanly(
        &["perplexity", &m, "--kl-divergence", &base, "-c", "32"],
        "windows of 64 tokens",
    );
}

#[test]
fn bench_at_depth_labels_its_tests_and_refuses_an_absurd_depth() {
    let m = tiny_gguf();
    let out = hearth(&[
        "bench", &m, "-p", "16", "-n", "4", "-r", "1", "-d", "40", "-t", "1",
    ]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("| pp16 @ d40 |") && s.contains("| tg4 @ d40 |"),
        "{s}"
    );
    fails_cleanly(
        &["bench", &m, "-p", "16", "-n", "4", "-d", "999999999999"],
        "the largest -d plus -p / -n that fits",
    );
}
