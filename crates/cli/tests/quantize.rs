//! `hearth quantize` from the command line: a tiny model quantizes; bad arguments and hostile
//! files fail with a clear message and exit 1, leaving no output.
use std::path::PathBuf;
use std::process::Command;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama/model.gguf")
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("q_cli_{}_{name}", std::process::id()))
}

fn hearth(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quantize_command() {
    let (src, out) = (tiny(), tmp("q8.gguf"));
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    let (code, err) = hearth(&[
        "quantize",
        s,
        o,
        "q8_0",
        "-t",
        "2",
        "--tensor-type",
        "ffn_down=Q4_0",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Q4_0") && err.contains("Q8_0"), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");

    let imat = tmp("garbage.imatrix");
    std::fs::write(&imat, b"\x02\x00\x00\x00not an imatrix").unwrap();
    let bad_out = tmp("never.gguf");
    let b = bad_out.to_str().unwrap();
    for (args, want) in [
        (vec!["quantize", s, b, "Q9_X"], "unknown quantization type"),
        (
            vec!["quantize", s, b, "Q4_0", "--tensor-type", "ffn_down"],
            "expected REGEX=TYPE",
        ),
        (
            vec!["quantize", s, b, "Q4_0", "--tensor-type", "(=Q4_0"],
            "bad regex",
        ),
        (
            vec!["quantize", s, b, "Q4_0", "--tensor-type", "ffn=TQ1_0"],
            "not a type hearth can write",
        ),
        (
            vec![
                "quantize",
                s,
                b,
                "Q4_0",
                "--imatrix",
                imat.to_str().unwrap(),
            ],
            "imatrix",
        ),
        (vec!["quantize", o, b, "Q4_0"], "allow-requantize"),
        (vec!["quantize", s, s, "Q4_0"], "is the input"),
    ] {
        let (code, err) = hearth(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(!bad_out.exists(), "{args:?} left an output");
    }
    for p in [out, imat] {
        let _ = std::fs::remove_file(p);
    }
}
