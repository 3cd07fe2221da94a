//! Issue 17 (item 4): every alert, recording rule and dashboard query of
//! `packaging/prometheus` and `packaging/grafana`, run against a real
//! Prometheus server scraping a real node_exporter that reads longconn's
//! textfile, written by real `collect` runs over real traffic. Each query
//! must parse and return data.

use std::{
    path::{Path, PathBuf},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{
    env::privileged_or_skip,
    prom::{NodeExporter, PrometheusServer},
    traffic::Traffic,
    TestEnv,
};

/// The labels the DaemonSet (packaging/kubernetes) gives the workload families.
const WORKLOAD_LABELS: &[&str] = &["--workload-labels", "workload,namespace,pod,container"];

fn packaging(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(rel)
}

/// Every comparison outside label matchers made a `bool` comparison: the
/// expression then returns each of its series (0 or 1) whatever its value,
/// so an alert's query is checked for data without the alert firing.
fn with_bool(expr: &str) -> String {
    let (mut out, mut depth, mut quoted) = (String::new(), 0usize, false);
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth = depth.saturating_sub(1),
            '>' | '<' | '=' | '!' if !quoted && depth == 0 => {
                if chars.peek() == Some(&'=') {
                    out.push('=');
                    chars.next();
                } else if c == '=' || c == '!' {
                    continue; // not a comparison (none occur outside matchers)
                }
                out.push_str(" bool");
            }
            _ => {}
        }
    }
    out
}

/// A Grafana query with its variables replaced by values that exist:
/// `.*` for the multi-value selectors (their "All"), or `workload`.
fn grafana_to_promql(expr: &str, workload: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
        .replace("$service", ".*")
        .replace("$workload", workload)
}

/// `label_values(SELECTOR, LABEL)` (a Grafana variable query) as PromQL.
fn label_values_query(q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {q:?} is not label_values(…)"));
    let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
    format!("count by ({}) ({})", label.trim(), selector.trim())
}

/// Every `expr` in the dashboard JSON, wherever it sits.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

fn has_data(data: &serde_json::Value) -> bool {
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => true,
        _ => data["result"].as_array().is_some_and(|r| !r.is_empty()),
    }
}

#[test]
fn with_bool_keeps_matchers_and_makes_comparisons_bool() {
    assert_eq!(
        with_bool(r#"time() - m{a!="x>y",b=~"c"} > 30"#),
        r#"time() - m{a!="x>y",b=~"c"} > bool 30"#
    );
    assert_eq!(
        with_bool("a >= 0.05\n  and sum by (x) (rate(b[5m])) > 1"),
        "a >= bool 0.05\n  and sum by (x) (rate(b[5m])) > bool 1"
    );
    assert_eq!(
        label_values_query(r#"label_values(m{n=~"$n"}, pod)"#),
        r#"count by (pod) (m{n=~"$n"})"#
    );
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let dir = packaging("prometheus");
    for args in [
        &["check", "rules", "longconn-rules.yml"][..],
        &["test", "rules", "longconn-rules.test.yml"][..],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_has_the_promised_shape() {
    let text = std::fs::read_to_string(packaging("grafana/longconn.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["schemaVersion"], 39);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for want in ["datasource", "namespace", "pod", "workload", "service"] {
        assert!(
            vars.contains(&want),
            "dashboard variable {want} missing: {vars:?}"
        );
    }
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Throughput per workload",
        "Packets per workload",
        "Throughput per service",
        "Packets per service",
        "Retransmit and loss ratio per workload",
        "Retransmit and loss ratio per service",
        "Active connections per workload",
        "Long connections",
        "Top long connections",
        "Reader health",
    ] {
        assert!(titles.contains(&want), "panel {want:?} missing: {titles:?}");
    }
}

#[test]
fn rules_and_dashboard_queries_return_data_from_a_real_prometheus() {
    if !privileged_or_skip("rules_and_dashboard_queries_return_data_from_a_real_prometheus") {
        return;
    }
    let mut env = TestEnv::new("dashboards");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("pair long 4");
    let collect = |env: &TestEnv| {
        let (st, err) = env.collect(WORKLOAD_LABELS);
        assert!(st.success(), "collect failed: {err}");
    };
    collect(&env);
    let ne = NodeExporter::start(&env.out_dir());
    let prom_dir = env.dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let rules = packaging("prometheus/longconn-rules.yml");
    let server = PrometheusServer::start(&prom_dir, &[ne.address()], &[&rules]);

    // 25 s of traffic and a collect every 2 s, scraped every second: the
    // long connection gets older than --long-threshold (its own series),
    // short ones churn, and every rate window holds several samples.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        gen.cmd("send long c2s 20000");
        gen.cmd("send long s2c 5000");
        gen.cmd("churn 3");
        collect(&env);
        sleep(Duration::from_secs(2));
    }
    let data = server.query("node_textfile_scrape_error");
    assert_eq!(
        data["result"][0]["value"][1], "0",
        "node_exporter read longconn.prom: {data}"
    );

    let mut failed = Vec::new();
    let mut check = |what: &str, q: &str| {
        let data = server.query(q);
        if !has_data(&data) {
            failed.push(format!("{what}: no data for {q}"));
        }
    };
    // Rules: Prometheus loaded and evaluated every one without error; each
    // recorded series exists; each alert's query returns series.
    let groups = server.api("rules");
    let mut n = 0;
    for g in groups["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            assert_eq!(r["health"], "ok", "rule {name}: {r}");
            let expr = r["query"].as_str().unwrap();
            if r["type"] == "recording" {
                check(&format!("recording rule {name}"), name);
                check(&format!("recording rule {name}"), expr);
            } else {
                check(&format!("alert {name}"), &with_bool(expr));
            }
            n += 1;
        }
    }
    assert!(n >= 29, "{n} rules loaded");

    // The dashboard: every panel query and variable query, with its
    // selectors at "All" and then at this test's workload.
    let text = std::fs::read_to_string(packaging("grafana/longconn.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut panel_exprs = Vec::new();
    exprs(&d["panels"], &mut panel_exprs);
    assert!(
        panel_exprs.len() >= 30,
        "{} panel queries",
        panel_exprs.len()
    );
    let wl = regex_escape(&env.workload());
    for e in &panel_exprs {
        check("dashboard", &grafana_to_promql(e, ".*"));
        if e.contains("$workload") {
            check("dashboard (this workload)", &grafana_to_promql(e, &wl));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["definition"].as_str().unwrap();
            check(
                &format!("variable {}", v["name"]),
                &grafana_to_promql(&label_values_query(q), ".*"),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{} queries without data:\n{}",
        failed.len(),
        failed.join("\n")
    );
    gen.cmd("close long");
}

/// `s` as a regex that matches only itself, inside a PromQL string (whose
/// escapes are Go's: a regex backslash is written twice).
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}
