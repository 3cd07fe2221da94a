//! Reading Prometheus text: our .prom files, promtool's verdict on them, and a
//! real node_exporter scrape of them.

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
    pub fn start(textfile_dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus-node-exporter")
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
            .expect("start prometheus-node-exporter (apt-get install prometheus-node-exporter)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "node_exporter did not listen on {port}"
            );
            sleep(Duration::from_millis(50));
        }
        Self { child, port }
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
