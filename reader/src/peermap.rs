//! `longconn-reader services-from-kubectl`: the cluster-wide peer map.
//! `kubectl get pods,services,endpointslices -A -o json` on stdin becomes
//! the `--services` CSV (servicemap) on stdout, so every node's reader names
//! a peer pod `namespace/pod` and a service `namespace/service` with no API
//! server access and no daemon (a CronJob runs this into a ConfigMap).
//!
//! Input: one or more JSON documents, each a `kind: List` (what kubectl
//! prints), a typed list (`PodList`, `ServiceList`, `EndpointSliceList`:
//! `kubectl get --raw`) or a single object. Only the fields used are read
//! (typed serde structs); unknown fields and kinds are ignored, missing
//! optional fields are empty. Bad JSON rejects the whole input (one line:
//! which document, which item, what).
//!
//! Output, in this order (first match wins in the map):
//! 1. **Service ClusterIPs**: each of `spec.clusterIPs` (or `clusterIP`;
//!    headless `None` and ExternalName services have none) with each TCP
//!    `spec.ports[].port` → the service.
//! 2. **Service endpoints**: each EndpointSlice address (IPv4/IPv6; FQDN
//!    slices are skipped) with each TCP `ports[].port` (`*` for a port
//!    without number: "all ports") → the service of label
//!    `kubernetes.io/service-name`. An endpoint is also a pod, and a flow to
//!    a backend on its service's port is named by the service, as it is on
//!    every other node and whether or not the client went through the
//!    ClusterIP (socket-level load balancing such as Cilium's rewrites the
//!    ClusterIP to the backend before the socket connects): operators read
//!    service-level traffic, and one series per service, not per replica.
//! 3. **Pods**: each of `status.podIPs` (or `podIP`), as /32 or /128, any
//!    port → the pod: whatever the services do not name (a pod's metrics
//!    port, pods behind no service). Pods with `spec.hostNetwork` share the
//!    node's address (a rule would name every port of the node after one
//!    pod) and pods that finished (`Succeeded`, `Failed`) have given their
//!    address back: both are skipped.
//!
//! Within each part lines are sorted (address, port, namespace, name) and an
//! address:port named twice keeps the first: the same cluster state always
//! gives the same bytes, so the ConfigMap changes only when the cluster does.
//! Names that could break a CSV line (`,`, `#`, whitespace, control
//! characters; Kubernetes never makes such names) are skipped and counted.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::IpAddr,
    process::ExitCode,
};

use anyhow::Context;
use serde::Deserialize;
use serde_json::value::RawValue;

/// `services-from-kubectl` takes no options: stdin in, stdout out.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Input: one or more JSON documents on stdin: a List (what kubectl prints), a
PodList/ServiceList/EndpointSliceList, or single objects; other kinds and
unknown fields are ignored.

Output, sorted (first match wins in the map):
  1. service ClusterIP,port    -> service, namespace (TCP ports; headless
                                  and ExternalName services have none)
  2. endpoint address,port     -> the endpointslice's service
  3. pod address/32 (/128),*   -> pod, namespace (hostNetwork and finished
                                  pods skipped)
A summary goes to stderr. Bad JSON: one line naming document and item, exit 1.

Example (the CronJob in packaging/kubernetes/peer-map-cronjob.yaml):
  kubectl get pods,services,endpointslices -A -o json \\
    | longconn-reader services-from-kubectl > services.csv
  longconn-reader collect --services services.csv
Why this order: README, \"On Kubernetes\", \"Peer names\".")]
pub struct Args {}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Meta {
    name: String,
    namespace: String,
    labels: std::collections::HashMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Pod {
    metadata: Meta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    host_network: bool,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    phase: String,
    #[serde(rename = "podIP")]
    pod_ip: String,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PodIp {
    ip: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Service {
    metadata: Meta,
    spec: ServiceSpec,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: String,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    ports: Vec<Port>,
}

/// A service or endpoint port; a missing protocol is TCP.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Port {
    port: Option<u16>,
    protocol: Option<String>,
}

impl Port {
    fn is_tcp(&self) -> bool {
        self.protocol.as_deref().is_none_or(|p| p == "TCP")
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct EndpointSlice {
    metadata: Meta,
    address_type: String,
    endpoints: Vec<Endpoint>,
    ports: Vec<Port>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Endpoint {
    addresses: Vec<String>,
}

/// The label naming an EndpointSlice's service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One line of the output: address, port (`None`: any), name, namespace.
type Line = (IpAddr, Option<u16>, String, String);

/// What was read and what was left out, for the header and the summary.
#[derive(Default)]
struct Counts {
    pods: usize,
    services: usize,
    slices: usize,
    host_network: usize,
    finished: usize,
    no_cluster_ip: usize,
    bad_names: usize,
    bad_addresses: usize,
}

/// The three parts of the map, each sorted and unique.
#[derive(Default)]
struct Peers {
    cluster_ips: BTreeSet<Line>,
    endpoints: BTreeSet<Line>,
    pods: BTreeSet<Line>,
    counts: Counts,
}

pub fn run(_args: &Args) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut text)
        .context("cannot read stdin (give the output of `kubectl get pods,services,endpointslices -A -o json`)")?;
    let peers = convert(&text)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write_csv(&mut out, &peers)?;
    out.flush()?;
    let c = &peers.counts;
    eprintln!(
        "longconn-reader: services-from-kubectl: {} pods, {} services, {} endpointslices -> {} lines (skipped: {} hostNetwork pods, {} finished pods, {} services without a ClusterIP, {} unusable names, {} unusable addresses)",
        c.pods,
        c.services,
        c.slices,
        peers.cluster_ips.len() + peers.endpoints.len() + peers.pods.len(),
        c.host_network,
        c.finished,
        c.no_cluster_ip,
        c.bad_names,
        c.bad_addresses
    );
    Ok(ExitCode::SUCCESS)
}

/// `convert`, for the reader's robustness tests: Ok(lines) or the error line.
#[cfg(test)]
pub fn convert_for_tests(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    let p = convert(text).map_err(|e| format!("{e:#}"))?;
    write_csv(&mut out, &p).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The peer map of every document in `text`.
fn convert(text: &str) -> anyhow::Result<Peers> {
    let mut peers = Peers::default();
    let mut docs = 0;
    for (d, doc) in serde_json::Deserializer::from_str(text)
        .into_iter::<&RawValue>()
        .enumerate()
    {
        let doc = doc.with_context(|| {
            format!(
                "stdin, document {}: not JSON; give the output of `kubectl get pods,services,endpointslices -A -o json`",
                d + 1
            )
        })?;
        docs += 1;
        peers
            .add(doc, "")
            .with_context(|| format!("stdin, document {}", d + 1))?;
    }
    anyhow::ensure!(
        docs > 0,
        "stdin holds no JSON document; give the output of `kubectl get pods,services,endpointslices -A -o json`"
    );
    Ok(peers)
}

impl Peers {
    /// Adds one object, or every item of a list; `kind` is the kind its
    /// list implies (`PodList` items carry none).
    fn add(&mut self, raw: &RawValue, kind: &str) -> anyhow::Result<()> {
        let head: Head = serde_json::from_str(raw.get())?;
        let kind = if head.kind.is_empty() {
            kind
        } else {
            &head.kind
        };
        if let Some(items) = head.items {
            let implied = kind.strip_suffix("List").unwrap_or("");
            for (i, item) in items.iter().enumerate() {
                self.add(item, implied)
                    .with_context(|| format!("item {}", i + 1))?;
            }
            return Ok(());
        }
        match kind {
            "Pod" => self.pod(serde_json::from_str(raw.get()).context("Pod")?),
            "Service" => self.service(serde_json::from_str(raw.get()).context("Service")?),
            "EndpointSlice" => {
                self.slice(serde_json::from_str(raw.get()).context("EndpointSlice")?)
            }
            _ => {}
        }
        Ok(())
    }

    fn pod(&mut self, p: Pod) {
        self.counts.pods += 1;
        if p.spec.host_network {
            self.counts.host_network += 1;
            return;
        }
        if matches!(p.status.phase.as_str(), "Succeeded" | "Failed") {
            self.counts.finished += 1;
            return;
        }
        let Some((name, ns)) = self.names(&p.metadata.name, &p.metadata.namespace) else {
            return;
        };
        let mut ips: Vec<&str> = p.status.pod_ips.iter().map(|i| i.ip.as_str()).collect();
        if ips.is_empty() && !p.status.pod_ip.is_empty() {
            ips.push(&p.status.pod_ip);
        }
        for ip in ips {
            if let Some(ip) = self.address(ip) {
                self.pods.insert((ip, None, ns.clone(), name.clone()));
            }
        }
    }

    fn service(&mut self, s: Service) {
        self.counts.services += 1;
        let mut ips = s.spec.cluster_ips.clone();
        if ips.is_empty() && !s.spec.cluster_ip.is_empty() {
            ips.push(s.spec.cluster_ip.clone());
        }
        ips.retain(|ip| !ip.is_empty() && ip != "None");
        if ips.is_empty() {
            self.counts.no_cluster_ip += 1;
            return;
        }
        let Some((name, ns)) = self.names(&s.metadata.name, &s.metadata.namespace) else {
            return;
        };
        for ip in &ips {
            let Some(ip) = self.address(ip) else { continue };
            for port in s.spec.ports.iter().filter(|p| p.is_tcp()) {
                if let Some(n) = port.port {
                    self.cluster_ips
                        .insert((ip, Some(n), ns.clone(), name.clone()));
                }
            }
        }
    }

    fn slice(&mut self, e: EndpointSlice) {
        self.counts.slices += 1;
        if !matches!(e.address_type.as_str(), "IPv4" | "IPv6" | "") {
            return;
        }
        let Some(service) = e.metadata.labels.get(SERVICE_NAME_LABEL) else {
            return;
        };
        let Some((name, ns)) = self.names(service, &e.metadata.namespace) else {
            return;
        };
        for ep in &e.endpoints {
            for addr in &ep.addresses {
                let Some(ip) = self.address(addr) else {
                    continue;
                };
                for port in e.ports.iter().filter(|p| p.is_tcp()) {
                    self.endpoints
                        .insert((ip, port.port, ns.clone(), name.clone()));
                }
            }
        }
    }

    /// (name, namespace) if both can stand in a CSV field.
    fn names(&mut self, name: &str, ns: &str) -> Option<(String, String)> {
        let ok = |s: &str| {
            !s.chars()
                .any(|c| c == ',' || c == '#' || c.is_whitespace() || c.is_control())
        };
        if name.is_empty() || !ok(name) || !ok(ns) {
            self.counts.bad_names += 1;
            return None;
        }
        Some((name.to_owned(), ns.to_owned()))
    }

    fn address(&mut self, s: &str) -> Option<IpAddr> {
        let ip = s.parse::<IpAddr>().ok();
        if ip.is_none() {
            self.counts.bad_addresses += 1;
        }
        ip
    }
}

/// The map as `--services` CSV: header, then the three parts in order.
fn write_csv(out: &mut impl Write, p: &Peers) -> std::io::Result<()> {
    let c = &p.counts;
    writeln!(
        out,
        "# Generated by longconn-reader services-from-kubectl {} from {} pods, {} services and {} endpointslices; the next run replaces it.",
        env!("CARGO_PKG_VERSION"),
        c.pods,
        c.services,
        c.slices
    )?;
    writeln!(out, "# cidr,ports,name,namespace (first match wins)")?;
    let part = |out: &mut dyn Write, title: &str, lines: &BTreeSet<Line>| {
        writeln!(out, "# {title}")?;
        let mut last: Option<(IpAddr, Option<u16>)> = None;
        for (ip, port, ns, name) in lines {
            if last == Some((*ip, *port)) {
                continue;
            }
            last = Some((*ip, *port));
            let port = port.map_or_else(|| "*".to_owned(), |p| p.to_string());
            writeln!(out, "{ip},{port},{name},{ns}")?;
        }
        Ok::<_, std::io::Error>(())
    };
    part(out, "service ClusterIPs", &p.cluster_ips)?;
    part(out, "service endpoints", &p.endpoints)?;
    writeln!(out, "# pods")?;
    for (ip, _, ns, name) in &p.pods {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        writeln!(out, "{ip}/{len},*,{name},{ns}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicemap::ServiceMap;

    /// tests/data/kubectl: real recorded kubectl/API output (see its README).
    fn recorded() -> String {
        recorded_docs().concat()
    }

    fn csv(text: &str) -> String {
        let mut out = Vec::new();
        write_csv(&mut out, &convert(text).unwrap()).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The recorded documents give exactly the golden map, and the map
    /// names the recorded pod and ClusterIP service.
    #[test]
    fn the_recorded_documents_give_the_golden_map() {
        let got = csv(&recorded());
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/data/kubectl/services.csv"
        );
        if std::env::var_os("LONGCONN_BLESS").is_some() {
            std::fs::write(golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(golden).unwrap();
        assert_eq!(got, want, "expected:\n{want}\nactual:\n{got}");
        let m = ServiceMap::parse(&got, "services.csv").unwrap();
        let name = |ip: &str, port| {
            m.lookup(ip.parse().unwrap(), port)
                .map(|r| format!("{}/{}", r.namespace, r.name))
        };
        assert_eq!(
            name("10.47.248.116", 4001).as_deref(),
            Some("default/dictionary1")
        );
        assert_eq!(name("10.47.248.116", 4002), None);
        assert_eq!(name("10.244.0.5", 8080).as_deref(), Some("default/t1"));
        assert_eq!(name("10.244.0.7", 1).as_deref(), Some("default/t2"));
        assert_eq!(
            name("10.244.0.3", 9153).as_deref(),
            Some("kube-system/kube-dns")
        );
        assert_eq!(
            name("10.244.0.3", 53).as_deref(),
            Some("kube-system/kube-dns")
        );
        assert_eq!(
            name("172.18.0.2", 6443).as_deref(),
            Some("default/kubernetes")
        );
    }

    /// The same objects in any order, as one List or as typed lists, give
    /// the same bytes.
    #[test]
    fn order_and_packaging_do_not_change_the_output() {
        let one = csv(&recorded());
        let mut docs: Vec<String> = recorded_docs();
        docs.reverse();
        assert_eq!(csv(&docs.concat()), one);
        let items: Vec<String> = recorded_docs()
            .iter()
            .flat_map(|d| {
                let v: serde_json::Value = serde_json::from_str(d).unwrap();
                let kind = v["kind"].as_str().unwrap().to_owned();
                match v["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            let mut i = i.clone();
                            if i.get("kind").is_none() {
                                i["kind"] = kind.trim_end_matches("List").into();
                            }
                            i.to_string()
                        })
                        .collect::<Vec<_>>(),
                    None => vec![v.to_string()],
                }
            })
            .rev()
            .collect();
        let list = format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
            items.join(",")
        );
        assert_eq!(csv(&list), one);
    }

    fn recorded_docs() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/kubectl");
        [
            "pods.json",
            "service-clusterip.json",
            "service-headless.json",
            "endpointslices.json",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{dir}/{f}")).unwrap())
        .collect()
    }

    /// hostNetwork and finished pods, headless and ExternalName services,
    /// UDP ports, FQDN slices, dual-stack and unusable names, table-driven.
    #[test]
    fn what_is_skipped_and_what_is_kept() {
        for (doc, want) in [
            (
                r#"{"kind":"Pod","metadata":{"name":"node-exporter-x","namespace":"mon"},"spec":{"hostNetwork":true},"status":{"podIP":"10.0.0.1"}}"#,
                "",
            ),
            (
                r#"{"kind":"Pod","metadata":{"name":"job-1","namespace":"b"},"status":{"phase":"Succeeded","podIP":"10.1.0.9"}}"#,
                "",
            ),
            (
                r#"{"kind":"Pod","metadata":{"name":"dual","namespace":"n"},"status":{"podIP":"10.1.0.4","podIPs":[{"ip":"10.1.0.4"},{"ip":"fd00::4"}]}}"#,
                "10.1.0.4/32,*,dual,n\nfd00::4/128,*,dual,n\n",
            ),
            (
                r#"{"kind":"Pod","metadata":{"name":"pending","namespace":"n"},"status":{"phase":"Pending"}}"#,
                "",
            ),
            (
                r#"{"kind":"Service","metadata":{"name":"ext","namespace":"n"},"spec":{"type":"ExternalName","externalName":"db.example.com"}}"#,
                "",
            ),
            (
                r#"{"kind":"Service","metadata":{"name":"dns","namespace":"kube-system"},"spec":{"clusterIPs":["10.96.0.10","fd00::a"],"ports":[{"port":53,"protocol":"UDP"},{"port":53,"protocol":"TCP"},{"port":9153}]}}"#,
                "10.96.0.10,53,dns,kube-system\n10.96.0.10,9153,dns,kube-system\nfd00::a,53,dns,kube-system\nfd00::a,9153,dns,kube-system\n",
            ),
            (
                r#"{"kind":"EndpointSlice","metadata":{"namespace":"n","labels":{"kubernetes.io/service-name":"web"}},"addressType":"FQDN","endpoints":[{"addresses":["a.example.com"]}],"ports":[{"port":80}]}"#,
                "",
            ),
            (
                r#"{"kind":"EndpointSlice","metadata":{"namespace":"n","labels":{"kubernetes.io/service-name":"all"}},"addressType":"IPv4","endpoints":[{"addresses":["10.1.0.8"]}],"ports":[{}]}"#,
                "10.1.0.8,*,all,n\n",
            ),
            (
                r#"{"kind":"EndpointSlice","metadata":{"namespace":"n"},"addressType":"IPv4","endpoints":[{"addresses":["10.1.0.8"]}],"ports":[{"port":80}]}"#,
                "",
            ),
            (
                r#"{"kind":"Pod","metadata":{"name":"a,b","namespace":"n"},"status":{"podIP":"10.1.0.5"}}"#,
                "",
            ),
            (
                r#"{"kind":"Deployment","metadata":{"name":"x"},"spec":{"ports":"not a list"}}"#,
                "",
            ),
        ] {
            let got = csv(doc);
            let body: String = got
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(body, want, "{doc}");
            ServiceMap::parse(&got, "out.csv").unwrap();
        }
    }

    /// A backend named by two services on one port is named once, by the
    /// first in sort order; the output is a valid map.
    #[test]
    fn one_address_and_port_is_named_once() {
        let doc = r#"{"kind":"List","items":[
          {"kind":"EndpointSlice","metadata":{"namespace":"n","labels":{"kubernetes.io/service-name":"b"}},"addressType":"IPv4","endpoints":[{"addresses":["10.1.0.8"]}],"ports":[{"port":80}]},
          {"kind":"EndpointSlice","metadata":{"namespace":"n","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4","endpoints":[{"addresses":["10.1.0.8"]}],"ports":[{"port":80}]}]}"#;
        let got = csv(doc);
        assert!(
            got.contains("10.1.0.8,80,a,n\n") && !got.contains(",b,"),
            "{got}"
        );
    }

    /// Bad input is one line naming the document and item.
    #[test]
    fn bad_input_names_document_and_item() {
        for (text, want) in [
            ("", "no JSON document"),
            ("{", "document 1: not JSON"),
            (
                r#"{"kind":"List","items":[{"kind":"Pod"},{"kind":"Pod","status":{"podIPs":"x"}}]}"#,
                "document 1: item 2: Pod: invalid type",
            ),
            (r#"{"kind":"Pod"} ["#, "document 2: not JSON"),
        ] {
            let e = format!("{:#}", convert(text).err().unwrap());
            assert!(e.contains(want), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
