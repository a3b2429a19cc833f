//! `stratus run` as a process of its own, as an operator starts it: its metrics address read
//! from its first log line, its HTTP endpoints, its whole log kept for the test to read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// The value of the first sample in Prometheus `text` whose line starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The last `lines` lines of `log`: enough to say why a process failed, short enough that the
/// failure's first line stays in view of a CI log that keeps only part of the output.
pub fn tail(log: &str, lines: usize) -> &str {
    let start = log
        .char_indices()
        .rev()
        .filter(|&(_, c)| c == '\n')
        .nth(lines)
        .map_or(0, |(i, _)| i + 1);
    &log[start..]
}

/// A running `stratus run`; killed if the test fails before it stops.
pub struct Running {
    child: Child,
    /// Its metrics server, `127.0.0.1:port`.
    pub addr: String,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts `command` (a `stratus run … --metrics-addr 127.0.0.1:0`) and waits for the log
    /// line naming its metrics address. Its stderr is read to the end on a thread of its own,
    /// so a chatty log never blocks it.
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (first, address) = mpsc::channel();
        let kept = log.clone();
        let reader = std::thread::spawn(move || {
            let mut first = Some(first);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut running = Running {
            child,
            addr: String::new(),
            log,
            reader: Some(reader),
        };
        running.addr = address
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no metrics address; log:\n{}", running.log()));
        running
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls `/metrics` until the sample starting with `prefix` reaches `value`.
    pub fn wait_for_metric(&self, prefix: &str, value: u64, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (_, text) = get(&self.addr, "/metrics");
            let seen = metric(&text, prefix);
            if seen == Some(value) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix}: {seen:?}, not {value}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for it to exit; its exit status and whole log.
    pub fn terminate(self) -> (ExitStatus, String) {
        self.signal("TERM");
        self.wait()
    }

    /// Sends the signal `name` (`KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for it to exit; its exit status and whole log.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let exit = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (exit, self.log())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
