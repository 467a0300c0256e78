//! Shared test harness: the mock upstream, the proxy started in process on
//! 127.0.0.1:0, the real binary started as a child process, and a raw HTTP/1.1
//! client for the cases an HTTP library would smooth over.

#![allow(dead_code)]

pub mod mock;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use tollgate::cli::ServeArgs;
use tollgate::config::{Config, RawConfig};
use tollgate::proxy::Server;

/// A bound on every wait in the tests: a failure, never a synchronisation.
pub const WAIT: Duration = Duration::from_secs(10);

/// The shared fixtures folder beside the repository.
pub fn shared_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// The proxy running in this process.
pub struct TestProxy {
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// Holds the receipt log and signing key (unless the arguments named others).
    pub dir: tempfile::TempDir,
    /// The receipt log.
    pub receipts: PathBuf,
    /// The signing key file.
    pub signing_key: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy in front of `upstream` with the given `tollgate.toml` text.
    pub async fn start(upstream: &str, toml: &str) -> Self {
        Self::start_with(
            ServeArgs {
                listen: Some("127.0.0.1:0".into()),
                upstream: Some(upstream.into()),
                ..ServeArgs::default()
            },
            toml,
        )
        .await
    }

    /// Starts a proxy from explicit arguments and `tollgate.toml` text.
    pub async fn start_with(mut args: ServeArgs, toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("signing-key.pem");
        tollgate::keys::write_signing(&key_file, &tollgate::keys::generate().unwrap(), false)
            .unwrap();
        args.signing_key.get_or_insert(key_file);
        args.receipts
            .get_or_insert_with(|| dir.path().join("receipts.jsonl"));
        let raw = RawConfig::parse(toml, Path::new("test.toml")).unwrap();
        let config = Config::resolve(&args, raw, Path::new(".")).unwrap();
        let receipts = config.govern.receipts.clone();
        let signing_key = config.govern.signing_key.clone().unwrap();
        let server = Server::bind(config).await.unwrap();
        let url = server.url();
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            url,
            addr,
            dir,
            receipts,
            signing_key,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The receipts written so far.
    pub fn receipt_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.receipts)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Asserts that the receipt log verifies with the signing key.
    pub fn verify_receipts(&self) {
        let key = tollgate::keys::read_signing(&self.signing_key).unwrap();
        let mut files = tollgate::receipt::log::rotated_files(&self.receipts);
        files.push(self.receipts.clone());
        let report = tollgate::receipt::verify::verify(&files, &[key.verifying_key()]);
        assert!(report.ok(), "{:?}", report.failure);
    }

    /// Stops accepting and waits for in-flight requests (bounded).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Asserts that the proxy still relays an ordinary request.
pub async fn still_serving(proxy: &TestProxy, mock: &mock::MockUpstream) {
    mock.push(mock::Reply::json("{\"alive\":true}"));
    let response = client()
        .get(format!("{}/v1/models", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "{\"alive\":true}");
}

/// A plain HTTP/1.1 client with no retries, no decompression and no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Deterministic bytes of every value, for bodies that must survive unchanged.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads the rest of a streamed response into `got` (each chunk bounded by
/// [`WAIT`]).
pub async fn read_to_end(response: &mut reqwest::Response, got: &mut Vec<u8>) {
    while let Some(chunk) = tokio::time::timeout(WAIT, response.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        got.extend_from_slice(&chunk);
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("server did not close the connection")
        .unwrap();
    out
}

/// Splits a raw HTTP/1.1 response into its head (as text) and body bytes.
pub fn split_response(raw: &[u8]) -> (String, Vec<u8>) {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    (
        String::from_utf8_lossy(&raw[..at]).into_owned(),
        raw[at + 4..].to_vec(),
    )
}

/// Decodes a chunked body.
pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Counts the data chunks of a chunked body (the final empty chunk excluded).
pub fn count_chunks(mut body: &[u8]) -> usize {
    let mut count = 0;
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return count;
        }
        count += 1;
        body = &body[line_end + 2 + size + 2..];
    }
}

/// The `tollgate` binary running as a child process, its log lines collected.
pub struct Binary {
    pub pid: u32,
    lines: std_mpsc::Receiver<String>,
    exit: std_mpsc::Receiver<std::process::ExitStatus>,
    exited: bool,
    pub seen: Vec<String>,
}

impl Binary {
    /// Starts `tollgate ARGS…` in `dir`, with `env` added.
    pub fn start(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command.args(args);
        Self::spawn(command, dir, env)
    }

    /// Starts `tollgate serve` on a free port of 127.0.0.1 in front of `upstream`,
    /// with `extra` arguments, in `dir`, with `env` added.
    pub fn serve(upstream: &str, extra: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--upstream", upstream];
        args.extend_from_slice(extra);
        Self::start(&args, dir, env)
    }

    /// Starts `tollgate ARGS…` through `sh`, after the shell commands in
    /// `prelude` (resource limits, signal dispositions), which `exec` keeps.
    pub fn start_after(prelude: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude}\nexec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .args(args);
        Self::spawn(command, dir, env)
    }

    fn spawn(mut command: Command, dir: &Path, env: &[(&str, &str)]) -> Self {
        command
            .current_dir(dir)
            .env("TOLLGATE_LOG", "info")
            .env_remove("TOLLGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child: Child = command.spawn().unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (exit_tx, exit_rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Self {
            pid,
            lines: rx,
            exit: exit_rx,
            exited: false,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the "listening on" line and returns the base URL.
    pub fn wait_listening(&mut self) -> String {
        let line = self.wait_line("listening on ");
        let start = line.find("listening on ").unwrap() + "listening on ".len();
        line[start..].split_whitespace().next().unwrap().to_owned()
    }

    /// Sends a signal with the system's `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.exit.recv_timeout(WAIT).expect("tollgate did not exit");
        self.exited = true;
        status
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if !self.exited {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

/// Runs `tollgate ARGS…` to completion in `dir`, returning status, stdout, stderr.
pub fn run_binary(
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
