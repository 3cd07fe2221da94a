//! Reading Prometheus text: our .prom files, promtool's verdict on them, a
//! real node_exporter scrape of them, and a real Prometheus server scraping
//! that node_exporter (queried through its HTTP API).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// Series name + sorted labels -> value.
pub type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

pub fn parse(text: &str) -> Series {
    let mut out = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((n, rest)) => (n.to_owned(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.insert((name, labels), value);
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// The value of `name` whose labels include every pair of `want`.
pub fn value(series: &Series, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    series.iter().find_map(|((n, l), v)| {
        (n == name
            && want
                .iter()
                .all(|(k, val)| l.get(*k).map(String::as_str) == Some(*val)))
        .then_some(*v)
    })
}

/// `promtool check metrics` on a file; panics with promtool's words on failure.
pub fn promtool_check(path: &Path) {
    let input = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(input)
        .output()
        .expect("run promtool (apt-get install prometheus)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics {}: {said}",
        path.display()
    );
}

/// A real node_exporter reading textfiles from `dir`, on a free loopback port.
pub struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    /// The `host:port` it listens on.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it on a port that was free a moment ago; if another test took
    /// that port first (node_exporter then exits), on another one.
    pub fn start(textfile_dir: &Path) -> Self {
        let mut tried = Vec::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("prometheus-node-exporter")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--collector.disable-defaults")
                .arg("--collector.textfile")
                .arg(format!(
                    "--collector.textfile.directory={}",
                    textfile_dir.display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "start prometheus-node-exporter (apt-get install prometheus-node-exporter)",
                );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    tried.push(format!("{port}: exited {status}"));
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    tried.push(format!("{port}: not listening after 10 s"));
                    break;
                }
                sleep(Duration::from_millis(50));
            }
        }
        panic!("node_exporter did not start: {tried:?}");
    }

    /// GET /metrics (plain HTTP/1.0), body only.
    pub fn scrape(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect node_exporter");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_owned()
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: good enough for a child
/// that binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited ({st}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        sleep(Duration::from_millis(100));
    }
}

/// GET `path` from 127.0.0.1:`port` (plain HTTP/1.0): status line and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (Debian's `prometheus`) on a free loopback
/// port, with its own config and TSDB in `dir`, scraping `targets` every
/// second and evaluating `rule_files` every second. Killed on drop.
pub struct PrometheusServer {
    child: Child,
    port: u16,
}

impl PrometheusServer {
    pub fn start(dir: &Path, targets: &[String], rule_files: &[&Path]) -> Self {
        let port = free_port();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {:?}", p.display().to_string()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: [{}]\n",
            rules.join("\n"),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_path)
            .output()
            .expect("run promtool (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        wait_listening(port, "prometheus", &mut child);
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready").0.split(' ').nth(1) != Some("200") {
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            sleep(Duration::from_millis(200));
        }
        server
    }

    /// GET /api/v1/`endpoint` and its JSON; panics unless "status" is "success".
    pub fn api(&self, endpoint: &str) -> serde_json::Value {
        let (status, body) = http_get(self.port, &format!("/api/v1/{endpoint}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{endpoint}: {status}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{endpoint}: {status}: {body}");
        v
    }

    /// An instant query: the result vector (or scalar) as JSON; panics with
    /// Prometheus's own words when the query does not parse or fails.
    pub fn query(&self, promql: &str) -> serde_json::Value {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {promql}: {status}: {e}: {body}"));
        assert_eq!(v["status"], "success", "query {promql}: {status}: {body}");
        v["data"].clone()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
