//! Reading every access-log format back, rotated files included, strictly:
//! a torn line, a header missing from a rotated CSV file or a line that is
//! not one whole record fails the test naming file and line.
//!
//! The three formats (`access.csv`, `access.jsonl`, `otlp-logs.jsonl`) carry
//! the same records; each reader returns them as field maps with the CSV
//! column names, so one exactly-once check applies to all of them.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde_json::Value;

/// One access record: CSV column name -> value as text.
pub type Record = HashMap<String, String>;

/// `dir/name` and its rotated files `name.1`, `name.2`, ..., oldest first
/// (the highest number is the oldest). Fails on a rotated file with a
/// name that is not `name.<n>` (the reader's hidden `.name.new` files are
/// uncommitted and not listed).
pub fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    let mut live = None;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f == name {
            live = Some(e.path());
        } else if let Some(n) = f.strip_prefix(name).and_then(|r| r.strip_prefix('.')) {
            let n: u32 = n
                .parse()
                .unwrap_or_else(|_| panic!("unexpected file {f} beside {name}"));
            rotated.push((n, e.path()));
        }
    }
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let nums: Vec<u32> = rotated.iter().rev().map(|(n, _)| *n).collect();
    assert_eq!(
        nums,
        (1..=rotated.len() as u32).collect::<Vec<_>>(),
        "{name}: rotated files are not numbered 1..n"
    );
    rotated.into_iter().map(|(_, p)| p).chain(live).collect()
}

fn text(f: &Path) -> String {
    let t = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    assert!(
        t.is_empty() || t.ends_with('\n'),
        "{}: ends with a torn line {:?}",
        f.display(),
        t.lines().last()
    );
    t
}

/// Every access record `collect` wrote into `out`, per format (CSV, JSON
/// Lines, OTLP logs; rotated files included), each with its file name.
pub fn every_format(out: &Path) -> [(&'static str, Vec<Record>); 3] {
    [
        ("access.csv", csv(&files(out, "access.csv"))),
        ("access.jsonl", jsonl(&files(out, "access.jsonl"))),
        ("otlp-logs.jsonl", otlp_logs(&files(out, "otlp-logs.jsonl"))),
    ]
}

/// Records of `access.csv`-style files, each file starting with the header.
pub fn csv(files: &[PathBuf]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut header: Option<csv::StringRecord> = None;
    for f in files {
        let t = text(f);
        if t.is_empty() {
            continue;
        }
        let mut r = csv::Reader::from_reader(t.as_bytes());
        let h = r.headers().unwrap().clone();
        assert!(
            h.iter().any(|c| c == "cookie") && h.iter().any(|c| c == "seq"),
            "{}: first line is not the header: {h:?}",
            f.display()
        );
        if let Some(prev) = &header {
            assert_eq!(prev, &h, "{}: another header", f.display());
        }
        header = Some(h.clone());
        for row in r.records() {
            // Strict: a row with another field count is an error.
            let row = row.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            out.push(
                h.iter()
                    .zip(row.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Records of `access.jsonl`-style files: one JSON object per line.
pub fn jsonl(files: &[PathBuf]) -> Vec<Record> {
    let mut out = Vec::new();
    for f in files {
        for (i, line) in text(f).lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {line:?}", f.display(), i + 1));
            let o = v
                .as_object()
                .unwrap_or_else(|| panic!("{}:{}: not an object", f.display(), i + 1));
            out.push(o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect());
        }
    }
    out
}

/// An OTLP attribute's value as text (`intValue` is a string in OTLP/JSON).
pub fn attr_value(kv: &Value) -> String {
    let v = &kv["value"];
    for k in ["stringValue", "intValue"] {
        if let Some(s) = v[k].as_str() {
            return s.to_owned();
        }
    }
    for k in ["doubleValue", "boolValue"] {
        if let Some(x) = v.get(k) {
            return x.to_string();
        }
    }
    v.to_string()
}

/// Log records of `otlp-logs.jsonl`-style files, one ExportLogsServiceRequest
/// per line; attribute keys as CSV columns (`longconn.` dropped, the
/// `network.*` addresses as `local_addr` etc., the workload's `k8s.*` and
/// `container.*` names as `namespace`, `pod`, `pod_uid`, `container`,
/// `container_id`).
pub fn otlp_logs(files: &[PathBuf]) -> Vec<Record> {
    let mut out = Vec::new();
    for f in files {
        for (i, line) in text(f).lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", f.display(), i + 1));
            let mut n = 0;
            for rl in v["resourceLogs"].as_array().into_iter().flatten() {
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for r in sl["logRecords"].as_array().into_iter().flatten() {
                        n += 1;
                        out.push(
                            r["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|kv| {
                                    let k = kv["key"].as_str()?;
                                    let k = match k {
                                        "network.local.address" => "local_addr",
                                        "network.local.port" => "local_port",
                                        "network.peer.address" => "remote_addr",
                                        "network.peer.port" => "remote_port",
                                        "k8s.namespace.name" => "namespace",
                                        "k8s.pod.name" => "pod",
                                        "k8s.pod.uid" => "pod_uid",
                                        "k8s.container.name" | "container.name" => "container",
                                        "container.id" => "container_id",
                                        k => k.strip_prefix("longconn.")?,
                                    };
                                    Some((k.to_owned(), attr_value(kv)))
                                })
                                .collect(),
                        );
                    }
                }
            }
            assert!(
                n > 0,
                "{}:{}: a request without records",
                f.display(),
                i + 1
            );
        }
    }
    out
}

fn num(r: &Record, k: &str, what: &str) -> u64 {
    r.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: field {k} is not a number in {r:?}"))
}

/// The exactly-once check for one format's records of `workload`: no
/// (cookie, seq) twice, each cookie's seqs are 1..=n in file order (no gap,
/// nothing out of order across rotated files), and at most one close per
/// cookie, as its last record. Returns each cookie's close record.
pub fn exactly_once(what: &str, recs: &[Record], workload: &str) -> BTreeMap<u64, Record> {
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut closes: BTreeMap<u64, Record> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| r.get("workload").map(String::as_str) == Some(workload))
    {
        let cookie = num(r, "cookie", what);
        let seq = num(r, "seq", what);
        let s = seqs.entry(cookie).or_default();
        assert!(
            !closes.contains_key(&cookie),
            "{what}: cookie {cookie} has a record (seq {seq}) after its close"
        );
        s.push(seq);
        if r["event"] == "close" {
            closes.insert(cookie, r.clone());
        } else {
            assert_eq!(r["event"], "periodic", "{what}: event of {r:?}");
        }
    }
    for (cookie, s) in &seqs {
        assert_eq!(
            s,
            &(1..=s.len() as u64).collect::<Vec<_>>(),
            "{what}: cookie {cookie}'s records (seq) have a gap, a duplicate or are out of order"
        );
    }
    closes
}

/// The python with opentelemetry-proto (scripts/test makes a venv and sets
/// `LONGCONN_OTLP_PYTHON`); unset is a failure under CI=true, else a skip.
pub fn schema_python() -> Option<PathBuf> {
    match std::env::var_os("LONGCONN_OTLP_PYTHON") {
        Some(p) => Some(p.into()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("LONGCONN_OTLP_PYTHON unset under CI=true: scripts/test sets it")
        }
        None => {
            eprintln!("SKIP schema check: LONGCONN_OTLP_PYTHON unset (scripts/test sets it)");
            None
        }
    }
}

/// Every line of `files` is one valid OTLP request of `kind` (metrics|logs)
/// by the official protobuf schema (`tests/otlp_check.py`).
pub fn schema_check(kind: &str, files: &[PathBuf]) {
    let Some(py) = schema_python() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_check.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(kind)
        .args(files)
        .output()
        .expect("run otlp_check.py");
    assert!(
        out.status.success(),
        "official OTLP schema rejects {files:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
