//! The `gorae` binary as a user runs it.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use std::process::Command;

fn gorae() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gorae"))
}

/// `gorae run` on SmolLM2 at temperature 0 with `flags` and `prompt`; asserts success and
/// returns (stdout, stderr).
fn greedy_smollm2(flags: &[&str], prompt: &str) -> (String, String) {
    let out = gorae()
        .args(["run", common::smollm2().to_str().unwrap(), "--temp", "0"])
        .args(flags)
        .arg("-p")
        .arg(prompt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

#[test]
fn chat_answer_names_paris_and_stops_at_end_of_turn() {
    let (stdout, stderr) = greedy_smollm2(
        &["-n", "64"],
        "What is the capital city of France? Answer in one sentence.",
    );
    println!("answer: {stdout:?}");
    assert!(stdout.contains("Paris"), "{stdout:?}");
    assert!(stderr.contains("stop: EndOfTurn"), "{stderr}");
}

/// `--stats` replaces the one-line summary with a block; SmolLM2 answers this Korean prompt in
/// Hangul (greedy, checked here), so the block carries syllables/s beside tokens/s.
#[test]
fn run_stats_reports_hangul_syllables_for_korean_output() {
    let (stdout, stderr) = greedy_smollm2(
        &["-n", "16", "--stats"],
        "한국의 수도는 어디인가요? 한국어로 대답하세요.",
    );
    assert!(gorae_text::hangul_syllables(&stdout) > 0, "{stdout:?}");
    let stats = stderr.split("stats:").nth(1).unwrap_or_default();
    assert!(
        stats.contains("prompt") && stats.contains("generation"),
        "{stderr}"
    );
    assert!(
        stats.contains("t/s,") && stats.contains("syl/s"),
        "{stderr}"
    );
}

#[test]
fn bad_paths_and_files_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    for (path, expect) in [
        (dir.path().join("missing.gguf"), "cannot open model"),
        (junk.clone(), "cannot load"),
    ] {
        let out = gorae()
            .args(["run", path.to_str().unwrap(), "-p", "hi"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn inspect_reports_the_model() {
    let out = gorae()
        .args(["inspect", common::smollm2().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "architecture:  llama",
        "tensors:",
        "Q4_1",
        "Q8_0",
        "chat template: present",
        "n_layer 30",
        "n_head_kv 3",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

#[test]
fn tokenize_render_and_logits_commands() {
    let model = common::smollm2();
    let out = gorae()
        .args(["tokenize", model.to_str().unwrap(), "--text", "Hello world"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!ids.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("in.jsonl");
    std::fs::write(&jsonl, "\"Hello world\"\n\"안녕하세요\"\n").unwrap();
    let out = gorae()
        .args([
            "tokenize",
            model.to_str().unwrap(),
            "--jsonl",
            jsonl.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let lines: Vec<Vec<u32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], ids);

    let case = dir.path().join("case.json");
    std::fs::write(&case, r#"{"messages":[{"role":"user","content":"Hi"}],"tools":null,"add_generation_prompt":true,"kwargs":{}}"#).unwrap();
    let out = gorae()
        .args([
            "render",
            model.to_str().unwrap(),
            "--case",
            case.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("<|im_start|>system\n") && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );

    // Batched and one-token-at-a-time logits agree.
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    for (out_path, extra) in [(&a, None), (&b, Some("--decode"))] {
        let mut cmd = gorae();
        cmd.args([
            "logits",
            model.to_str().unwrap(),
            "--ids",
            "1,9690,198,2683",
            "--all-positions",
            "--out",
            out_path.to_str().unwrap(),
        ]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (sa, va) = gorae_runtime::npy::read_f32(&mut std::fs::File::open(&a).unwrap()).unwrap();
    let (sb, vb) = gorae_runtime::npy::read_f32(&mut std::fs::File::open(&b).unwrap()).unwrap();
    assert_eq!(sa, vec![4, 49152]);
    assert_eq!(sa, sb);
    let scale = va.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = va
        .iter()
        .zip(&vb)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff / scale <= 1e-4, "{}", diff / scale);
}

#[test]
fn inspect_deepseek_reports_the_latent_cache_size() {
    let dir = common::models_dir().join("fixtures/tiny-deepseek-v3-nomtp");
    assert!(
        dir.exists(),
        "{} is missing: run `python3 scripts/fetch_models.py`",
        dir.display()
    );
    let out = gorae()
        .args(["inspect", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // n_layer × (kv_lora_rank + qk_rope_head_dim) × 4 bytes = 4 × (64 + 16) × 4
    assert!(
        stdout.contains("kv cache:      1280 bytes per token"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kv_lora_rank 64") && stdout.contains("NoauxTc/Sigmoid"),
        "{stdout}"
    );
}

/// The tiny DeepSeek-V3 fixture with its MTP layer, plus a tokenizer.json built from the SmolLM2
/// GGUF (the fixture's tokenizer is SmolLM2's), in a temporary model directory.
fn deepseek_mtp_dir(tmp: &std::path::Path) -> std::path::PathBuf {
    let src = common::models_dir().join("fixtures/tiny-deepseek-v3");
    assert!(
        src.exists(),
        "{} is missing: run `python3 scripts/fetch_models.py`",
        src.display()
    );
    let dir = tmp.join("tiny-deepseek-v3");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    let gguf = gorae_formats::gguf::GgufFile::open(&common::smollm2()).unwrap();
    let tok = gorae_text::Tokenizer::from_gguf(&gguf).unwrap();
    tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    dir
}

#[test]
fn speculative_mtp_prints_the_greedy_output_and_the_acceptance_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = deepseek_mtp_dir(tmp.path());
    let run = |extra: &[&str]| {
        let out = gorae()
            .args([
                "run",
                dir.to_str().unwrap(),
                "--raw",
                "--temp",
                "0",
                "-n",
                "24",
                "-p",
                "The quick brown fox",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (plain, _) = run(&[]);
    let (spec, stderr) = run(&["--speculative", "mtp"]);
    assert_eq!(spec, plain);
    assert!(stderr.contains("draft acceptance"), "{stderr}");
    // Sampling is refused: drafts are verified greedily.
    let out = gorae()
        .args([
            "run",
            dir.to_str().unwrap(),
            "--raw",
            "--temp",
            "0.7",
            "-p",
            "x",
            "--speculative",
            "mtp",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temp 0"));
}

/// A reader that goes away (`gorae inspect M | head -1`) ends the command quietly: no panic
/// ("failed printing to stdout"), a success status. The pipe is closed before the model has
/// loaded, so every write the command makes meets a closed pipe.
#[test]
fn closed_stdout_ends_quietly() {
    let mut child = gorae()
        .args(["inspect", common::smollm2().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
