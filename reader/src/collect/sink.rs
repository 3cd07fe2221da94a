//! The access events of one cycle, encoded into every append-only file as
//! the cycle makes them (an event is in memory only while it is encoded).
//!
//! Every byte is written before `with_sink` returns, which is before the
//! caller's commit point; a write error fails the cycle (nothing is
//! committed). A file that fails is dropped from the cycle while the others
//! are still written (each bounded by the records themselves: a failed
//! run's tail is cut by the next), so the one error names every file that
//! could not be written and how many bytes the cycle's records need.

use std::collections::BTreeMap;

use crate::output::{
    access,
    applog::{AppendLog, Committed, Tail, Written},
    event::AccessEvent,
    otlp, AppendFile,
};

/// One append-only file being written, and how events go into it.
struct Open<'a> {
    file: AppendFile,
    tail: Tail<'a>,
    logs: Option<otlp::LogsWriter<'a>>,
    /// Bytes of records encoded for it this cycle.
    bytes: u64,
    /// Its write failed: nothing more goes into it this cycle.
    failed: Option<std::io::Error>,
}

/// Runs `f` with a sink for the cycle's events, appending each to the
/// access-log and OTLP-logs files in `files` (`known`: what the state knows
/// of each); returns `f`'s result and the new (uncommitted) position of
/// every file written.
pub fn with_sink<R>(
    files: &[(AppendFile, AppendLog)],
    known: &BTreeMap<AppendFile, Committed>,
    resource: &otlp::Resource,
    now_ns: u64,
    per_line: usize,
    f: impl FnOnce(&mut dyn FnMut(&AccessEvent<'_>)) -> R,
) -> anyhow::Result<(R, BTreeMap<AppendFile, Written>)> {
    let mut open: Vec<Open<'_>> = files
        .iter()
        .filter(|(file, _)| file.takes_events())
        .map(|(file, log)| Open {
            file: *file,
            tail: log.tail(known.get(file).copied()),
            logs: (*file == AppendFile::OtlpLogs)
                .then(|| otlp::LogsWriter::new(resource, now_ns, per_line)),
            bytes: 0,
            failed: None,
        })
        .collect();
    let result = f(&mut |e| {
        for o in &mut open {
            let buf = o.tail.buf();
            let before = buf.len();
            match (o.file, &mut o.logs) {
                (AppendFile::AccessCsv, _) => access::csv_row(buf, e),
                (AppendFile::AccessJsonl, _) => access::jsonl_line(buf, e),
                (_, Some(w)) => w.push(buf, e),
                (_, None) => {}
            }
            o.bytes += (buf.len() - before) as u64;
            if o.failed.is_some() {
                buf.clear();
            } else if let Err(err) = o.tail.flush_if_full() {
                o.failed = Some(err);
                o.tail.buf().clear();
            }
        }
    });
    let mut out = BTreeMap::new();
    let mut failed = Vec::new();
    let mut need = 0u64;
    for mut o in open {
        if let Some(w) = &mut o.logs {
            let before = o.tail.buf().len();
            w.finish(o.tail.buf());
            o.bytes += (o.tail.buf().len() - before) as u64;
        }
        need += o.bytes;
        if let Some(e) = o.failed.take() {
            failed.push(e);
            continue;
        }
        match o.tail.finish() {
            Ok(Some(w)) => {
                out.insert(o.file, w);
            }
            Ok(None) => {}
            Err(e) => failed.push(e),
        }
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "cannot append to {}; this cycle's records need about {} KiB there: free that much and the next cycle writes them (nothing was consumed)",
            list.join("; "),
            need.div_ceil(1024)
        );
    }
    Ok((result, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::access::testdata::{realistic, OwnedEvent};

    const NOW: u64 = 1_764_000_000_000_000_000;

    fn log(dir: &std::path::Path, file: AppendFile) -> (AppendFile, AppendLog) {
        let log = AppendLog {
            path: dir.join(file.name()),
            max_bytes: u64::MAX,
            keep: 1,
            header: file.header(),
            mode: 0o640,
            owner: None,
        };
        (file, log)
    }

    /// Streamed through the sink, every file holds exactly what the
    /// whole-batch encoders write, for counts around the line size.
    #[test]
    fn files_equal_the_batch_encoders() {
        let res = otlp::Resource {
            host_name: "h".into(),
        };
        for n in [0usize, 1, 999, 1000, 1001, 2500] {
            let d = tempfile::tempdir().unwrap();
            let files = vec![
                log(d.path(), AppendFile::AccessCsv),
                log(d.path(), AppendFile::AccessJsonl),
                log(d.path(), AppendFile::OtlpLogs),
            ];
            let owned: Vec<OwnedEvent> = (0..n as u64).map(realistic).collect();
            let records: Vec<AccessEvent<'_>> = owned.iter().map(OwnedEvent::event).collect();
            let (count, lens) = with_sink(&files, &BTreeMap::new(), &res, NOW, 1000, |emit| {
                for r in &records {
                    emit(r);
                }
                records.len()
            })
            .unwrap();
            assert_eq!(count, n);
            let mut csv = access::csv_header();
            csv.extend(access::encode_csv(&records));
            let mut logs = Vec::new();
            for chunk in records.chunks(1000) {
                logs.extend_from_slice(otlp::logs_request(chunk, &res, NOW).unwrap().as_bytes());
                logs.push(b'\n');
            }
            let read = |f: AppendFile| std::fs::read(d.path().join(f.name())).unwrap_or_default();
            if n == 0 {
                assert!(lens.is_empty(), "nothing written");
                continue;
            }
            for (_, log) in &files {
                log.publish().unwrap();
            }
            assert_eq!(read(AppendFile::AccessCsv), csv, "{n}");
            assert_eq!(
                read(AppendFile::AccessJsonl),
                access::encode_jsonl(&records),
                "{n}"
            );
            assert_eq!(read(AppendFile::OtlpLogs), logs, "{n}");
            assert_eq!(lens[&AppendFile::OtlpLogs].pos.len, logs.len() as u64);
        }
    }

    /// A file that cannot be written fails the cycle with its name.
    #[test]
    fn a_write_error_fails_naming_the_file() {
        let res = otlp::Resource {
            host_name: "h".into(),
        };
        for bad in [AppendFile::AccessCsv, AppendFile::OtlpLogs] {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join(bad.name())).unwrap();
            let files = vec![
                log(d.path(), AppendFile::AccessCsv),
                log(d.path(), AppendFile::OtlpLogs),
            ];
            let owned: Vec<OwnedEvent> = (0..5000).map(realistic).collect();
            let e = with_sink(&files, &BTreeMap::new(), &res, NOW, 1000, |emit| {
                for r in &owned {
                    emit(&r.event());
                }
            })
            .unwrap_err();
            assert!(format!("{e:#}").contains(bad.name()), "{e:#}");
        }
    }
}
