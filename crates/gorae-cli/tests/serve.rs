//! `gorae serve` end to end: the binary starts on a free port, answers over plain HTTP/1.1,
//! and exits 0 after SIGTERM. (The HTTP behaviour itself is tested in gorae-server.)

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One request on a fresh connection; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

#[cfg(unix)]
#[test]
fn serve_answers_and_exits_zero_on_sigterm() {
    let model = common::smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gorae"))
        .arg("serve")
        .arg(&model)
        .args(["--port", "0", "--alias", "smol", "--ctx", "256"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.trim().strip_prefix("gorae: serving on http://") {
            addr = Some(rest.to_string());
        }
        line.clear();
    }
    let addr = addr.expect("no `serving on` line");
    // Keep draining stderr so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let t0 = Instant::now();
    while http(&addr, "GET", "/ready", "").map(|r| r.0) != Some(200) {
        assert!(t0.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, body) = http(&addr, "GET", "/v1/models", "").unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("\"smol\""), "{body}");
    let (st, body) = http(
        &addr,
        "POST",
        "/v1/completions",
        r#"{"model": "smol", "prompt": "Hello", "max_tokens": 2}"#,
    )
    .unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("text_completion"), "{body}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest = drain.join().unwrap();
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(rest.contains("stopped"), "{rest}");
}
