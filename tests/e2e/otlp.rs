//! Issue 5: OTLP/JSON files the OpenTelemetry Collector ingests as-is, checked
//! with the official protobuf schema, and equal to longconn.prom and the
//! access log.

use std::{collections::BTreeMap, path::PathBuf, process::Command, thread::sleep, time::Duration};

use longconn_tests::{env::privileged_or_skip, prom, traffic::Traffic, TestEnv};
use serde_json::Value;

/// The python with opentelemetry-proto (scripts/test makes a venv and sets it).
fn schema_python() -> Option<PathBuf> {
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

fn schema_check(kind: &str, file: &std::path::Path) {
    let Some(py) = schema_python() else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(kind)
        .arg(file)
        .output()
        .expect("run otlp_check.py");
    assert!(
        out.status.success(),
        "official OTLP schema rejects {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn attr_label(key: &str) -> Option<String> {
    Some(match key {
        "network.local.address" => "local_address".into(),
        "network.local.port" => "local_port".into(),
        "network.peer.address" => "remote_address".into(),
        "network.peer.port" => "remote_port".into(),
        "network.transport" | "network.type" | "network.io.direction" => return None,
        k => k.strip_prefix("longconn.")?.to_owned(),
    })
}

fn attr_value(v: &Value) -> String {
    let v = &v["value"];
    for k in ["stringValue", "intValue"] {
        if let Some(s) = v[k].as_str() {
            return s.to_owned();
        }
    }
    v.to_string()
}

/// Prometheus-shaped series from one ExportMetricsServiceRequest, plus each
/// series' start time.
fn otlp_series(
    line: &str,
) -> (
    prom::Series,
    BTreeMap<(String, BTreeMap<String, String>), String>,
) {
    let v: Value = serde_json::from_str(line).unwrap();
    let (mut series, mut starts) = (prom::Series::new(), BTreeMap::new());
    for m in v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
    {
        let (points, name) = if m.get("sum").is_some() {
            assert_eq!(m["sum"]["aggregationTemporality"], 2, "cumulative");
            assert_eq!(m["sum"]["isMonotonic"], true);
            (
                &m["sum"]["dataPoints"],
                format!("{}_total", m["name"].as_str().unwrap()),
            )
        } else {
            (
                &m["gauge"]["dataPoints"],
                m["name"].as_str().unwrap().to_owned(),
            )
        };
        for p in points.as_array().unwrap() {
            let labels: BTreeMap<String, String> = p["attributes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|kv| Some((attr_label(kv["key"].as_str()?)?, attr_value(kv))))
                        .collect()
                })
                .unwrap_or_default();
            let value = match p.get("asInt") {
                Some(i) => i.as_str().unwrap().parse::<f64>().unwrap(),
                None => p["asDouble"].as_f64().unwrap(),
            };
            starts.insert(
                (name.clone(), labels.clone()),
                p["startTimeUnixNano"].as_str().unwrap().to_owned(),
            );
            series.insert((name.clone(), labels), value);
        }
    }
    (series, starts)
}

#[test]
fn otlp_files_parse_with_the_official_schema_and_equal_prom_and_access_log() {
    if !privileged_or_skip(
        "otlp_files_parse_with_the_official_schema_and_equal_prom_and_access_log",
    ) {
        return;
    }
    let mut env = TestEnv::new("otlp");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("pair long 4");
    gen.cmd("pair v6 6");
    let mut prev: Option<(prom::Series, BTreeMap<_, String>)> = None;
    let mut checked_starts = 0;
    for cycle in 0..4 {
        gen.cmd("send long c2s 50000");
        gen.cmd("send v6 s2c 20000");
        gen.cmd("churn 3");
        if cycle == 0 {
            sleep(Duration::from_secs(5)); // the pairs become long connections
        }
        let (st, err) = env.collect(&["--long-threshold", "5s"]);
        assert!(st.success(), "{err}");
        let lines = std::fs::read_to_string(env.out_dir().join("otlp-metrics.jsonl")).unwrap();
        let last = lines.lines().last().unwrap();
        assert_eq!(
            lines.lines().count(),
            cycle + 1,
            "one metrics line per cycle"
        );
        let (series, starts) = otlp_series(last);
        // Series by series equal to this cycle's longconn.prom (NaN-free).
        let prom_text = std::fs::read_to_string(env.out_dir().join("longconn.prom")).unwrap();
        let p = prom::parse(&prom_text);
        assert_eq!(
            series.len(),
            p.len(),
            "same number of series in OTLP and .prom"
        );
        for (k, v) in &p {
            assert_eq!(series.get(k), Some(v), "OTLP value of {k:?}");
        }
        if let Some((pseries, pstarts)) = &prev {
            for (k, s) in &starts {
                if let Some(ps) = pstarts.get(k) {
                    assert_eq!(s, ps, "start time of {k:?} changed between cycles");
                    checked_starts += 1;
                }
                if k.0.ends_with("_total") {
                    if let (Some(a), Some(b)) = (pseries.get(k), series.get(k)) {
                        assert!(b >= a, "{k:?} went back {a} -> {b}");
                    }
                }
            }
        }
        prev = Some((series, starts));
    }
    assert!(
        checked_starts > 50,
        "start times compared for {checked_starts} series only"
    );
    gen.cmd("close long");
    sleep(Duration::from_millis(200));
    let (st, err) = env.collect(&[]);
    assert!(st.success(), "{err}");

    schema_check("metrics", &env.out_dir().join("otlp-metrics.jsonl"));
    schema_check("logs", &env.out_dir().join("otlp-logs.jsonl"));

    // Log records equal access-log records, one for one.
    let mut otlp_recs = Vec::new();
    for line in std::fs::read_to_string(env.out_dir().join("otlp-logs.jsonl"))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        for r in v["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap()
        {
            assert_eq!(r["severityNumber"], 9);
            assert!(r["body"]["stringValue"]
                .as_str()
                .is_some_and(|b| b.contains(" -> ")));
            let a: BTreeMap<String, String> = r["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|kv| Some((attr_label(kv["key"].as_str()?)?, attr_value(kv))))
                .collect();
            otlp_recs.push((
                a["cookie"].clone(),
                a["seq"].clone(),
                a["bytes_sent"].clone(),
                a["bytes_received"].clone(),
                a["event"].clone(),
            ));
        }
    }
    let mut csv = csv::Reader::from_path(env.out_dir().join("access.csv")).unwrap();
    let h = csv.headers().unwrap().clone();
    let idx = |n: &str| h.iter().position(|x| x == n).unwrap();
    let access: Vec<_> = csv
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[idx("cookie")].to_owned(),
                r[idx("seq")].to_owned(),
                r[idx("bytes_sent")].to_owned(),
                r[idx("bytes_received")].to_owned(),
                r[idx("event")].to_owned(),
            )
        })
        .collect();
    assert!(access.len() > 20);
    assert_eq!(
        otlp_recs, access,
        "OTLP log records equal the access-log records"
    );
}
